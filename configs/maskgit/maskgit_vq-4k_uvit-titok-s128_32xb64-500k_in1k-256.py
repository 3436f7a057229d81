# MaskGIT generator in TiTok's U-ViT form (Yu et al. 2024, TiTok-S-128's
# generator: hidden 1024, 20 layers with long skips) over 128 1-D tokens of a
# 4096-code tokenizer; 294,990,848 parameters (tested). TiTok's recipe: arccos
# masking, label smoothing 0.1, weight 0.1 on unmasked tokens, class dropout
# 0.1, AdamW lr 2e-4 (0.9, 0.96) wd 0.03, 500k steps at global batch 2048;
# sampling: 64 steps, Gumbel temperature 2.8, cfg 6.9 power-cosine.
# TiTok reports gFID 1.97 for S-128. Sampling here is MaskGIT's
# (log-probability confidence); TiTok's own is sampling_mode='titok' (its cfg
# s is vistok's guidance_scale 1 + s), but its power-cosine decay for the
# U-ViT was not verified here, so this config keeps MaskGIT's sampler.
_base_ = [
    '../_base_/datasets/imagenet_tokens.py',
    '../_base_/schedules/adamw_generator.py',
    '../_base_/default_runtime.py',
]
token_root = 'data/tokens/imagenet-train-titok-s128'
model = dict(
    type='MaskGITGenerator',
    arch='titok-uvit',
    num_classes=1000,
    vocab_size=4096,
    token_shape=(128, ),
    mask_schedule='arccos',
    steps=64,
    choice_temperature=2.8,
    label_smoothing=0.1,
    unmasked_weight=0.1,
    class_dropout_prob=0.1,
    sampler=dict(type='TokenSampler', temperature=1.0, guidance_scale=6.9,
                 guidance_schedule='power_cosine'),
)
train_dataloader = dict(batch_size=64, dataset=dict(data_root=token_root))
optim_wrapper = dict(optimizer=dict(lr=2e-4, betas=(0.9, 0.96),
                                    weight_decay=0.03))
train_cfg = dict(max_iters=500000)
# TiTok trains its generators with an EMA copy (decay not given in the
# reference notes; 0.9999 here). mmengine's EMAHook writes the EMA weights
# into the checkpoint's state_dict, so tools/sample.py samples with them.
custom_hooks = [dict(type='EMAHook', momentum=1e-4)]
