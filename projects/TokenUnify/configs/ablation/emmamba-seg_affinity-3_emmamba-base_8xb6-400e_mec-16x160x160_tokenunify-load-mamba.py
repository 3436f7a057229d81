# Part-transfer ablation (v2), row "Mamba blocks only": the EMmamba† fine-tuning
# loading only these parts of the TokenUnify checkpoint (the rest keeps its
# random initialisation; everything is trained), as the release's
# `main_finetune2.py --load_mode vit`. Release -> vistok names: `vit`
# (the MambaEncoder: stem, GSC, tri-oriented Mamba, skip MLPs) =
# `backbone.encoder`, `encoder1..5` = `backbone.skip_blocks`, `decoder5..1`
# = `backbone.up_blocks` + `backbone.decoder1`; the output conv is never
# loaded (1 -> 3 channels). Row "Full" is the parent config.
_base_ = ['../emmamba-seg_affinity-3_emmamba-base_8xb6-400e_mec-16x160x160_tokenunify.py']
model = dict(pretrained=dict(
    select=[r'backbone\.encoder\..*'],
    allow_missing=[r'backbone\.skip_blocks\..*',
                       r'backbone\.(up_blocks|decoder1)\..*',
                       r'backbone\.final_conv\..*']))
