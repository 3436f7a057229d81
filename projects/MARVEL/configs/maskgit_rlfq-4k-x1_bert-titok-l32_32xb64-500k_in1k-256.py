# MaskGIT generator on MARVEL-L-32 tokens (TiTok-L-32's ImageBert: hidden
# 768, 24 layers, 16 heads; TiTok's recipe: arccos masking, label smoothing
# 0.1, weight 0.1 on unmasked tokens, class dropout 0.1, AdamW lr 2e-4 (0.9,
# 0.96) wd 0.03, 500k steps at global batch 2048; sampling 8 steps, Gumbel
# temperature 9.5, cfg 4.5 linear). MARVEL published no generator: this is
# TiTok's L-32 recipe applied to MARVEL's tokens.
# Token layout: the tokenizer's ids (B, 32, D) — D residual LFQ depths of
# 4,096 codes each — are one sequence of 32 x D positions in position-major
# order (position k, depth d at index k*D + d); the id at depth d is embedded
# and predicted as d*4096 + id (vocabulary D x 4096), and a depth-d position
# is only ever predicted among its own depth's 4,096 ids, so samples decode
# directly with the tokenizer. Export the tokens with tools/export_tokens.py
# and the MARVEL-L-32 stage-2 config / checkpoint.
_base_ = [
    '../../../configs/_base_/datasets/imagenet_tokens.py',
    '../../../configs/_base_/schedules/adamw_generator.py',
    '../../../configs/_base_/default_runtime.py',
]
depth = 1
token_root = 'data/tokens/imagenet-train-marvel-l32-x1'
model = dict(
    type='MaskGITGenerator',
    arch='titok-bert',
    num_classes=1000,
    vocab_size=4096 * depth,
    depth_vocab_size=4096,
    token_shape=(32, depth),
    mask_schedule='arccos',
    steps=8,
    # TiTok's sampling: Gumbel-max tokens and raw-logit confidence at a
    # temperature annealed from 9.5; its cfg 4.5 (l_c + 4.5 (l_c - l_u))
    # with linear decay is vistok's guidance_scale 5.5, 'linear'
    sampling_mode='titok',
    choice_temperature=9.5,
    label_smoothing=0.1,
    unmasked_weight=0.1,
    class_dropout_prob=0.1,
    sampler=dict(type='TokenSampler', temperature=1.0, guidance_scale=5.5,
                 guidance_schedule='linear'),
)
train_dataloader = dict(batch_size=64, dataset=dict(data_root=token_root))
optim_wrapper = dict(optimizer=dict(lr=2e-4, betas=(0.9, 0.96),
                                    weight_decay=0.03))
train_cfg = dict(max_iters=500000)
# TiTok trains its generators with an EMA copy (decay not given in the
# reference notes; 0.9999 here). mmengine's EMAHook writes the EMA weights
# into the checkpoint's state_dict, so tools/sample.py samples with them.
custom_hooks = [dict(type='EMAHook', momentum=1e-4)]
