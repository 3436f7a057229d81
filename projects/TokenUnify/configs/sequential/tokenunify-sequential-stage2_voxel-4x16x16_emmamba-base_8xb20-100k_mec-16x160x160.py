# Sequential TokenUnify (the release / v1 paper), stage 2 of 2: next-token +
# next-all (equal weights, `--auto_mode 1`) at 20 / GPU x 8, lr 1e-3 x 160 /
# 256 = 6.25e-4, no warm-up, cosine to 0 (`src/run_mamba_mae_AR.sh`), started
# from stage 1's last weights (`--pretrain_path`) with a fresh optimizer and
# schedule: `model.pretrained` loads the weights only, in `init_weights`; the
# next-token head, absent from stage 1, keeps its initialisation (allowed
# missing by name; anything else that does not fit is an error).
# The one-run `tokenunify-sequential_*` configs (a schedule hook switching
# tasks at half of training) are kept as the single-run variant.
_base_ = ['../tokenunify-autoregress_voxel-4x16x16_emmamba-base_8xb20-100k_mec-16x160x160.py']
stage1_checkpoint = 'work_dirs/tokenunify-sequential-stage1_voxel-4x16x16_emmamba-base_8xb40-100k_mec-16x160x160/iter_100000.pth'
model = dict(pretrained=dict(checkpoint=stage1_checkpoint,
                             allow_missing=[r'next_token_head\..*']))
