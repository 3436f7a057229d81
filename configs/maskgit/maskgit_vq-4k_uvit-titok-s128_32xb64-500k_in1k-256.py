# MaskGIT generator in TiTok's U-ViT form (Yu et al. 2024, TiTok-S-128's
# generator: hidden 1024, 20 layers with long skips) over 128 1-D tokens of a
# 4096-code tokenizer; 294,990,848 parameters (tested). TiTok's recipe
# (_base_/recipes/titok_generator.py); sampling: 64 steps, Gumbel
# temperature 2.8, cfg 6.9 power-cosine.
# TiTok reports gFID 1.97 for S-128. Sampling here is MaskGIT's
# (log-probability confidence); TiTok's own is sampling_mode='titok' (its cfg
# s is vistok's guidance_scale 1 + s), but its power-cosine decay for the
# U-ViT was not verified here, so this config keeps MaskGIT's sampler.
_base_ = ['../_base_/recipes/titok_generator.py']
token_root = 'data/tokens/imagenet-train-titok-s128'
model = dict(
    arch='titok-uvit',
    vocab_size=4096,
    token_shape=(128, ),
    steps=64,
    choice_temperature=2.8,
    sampler=dict(type='TokenSampler', temperature=1.0, guidance_scale=6.9,
                 guidance_schedule='power_cosine'),
)
train_dataloader = dict(dataset=dict(data_root=token_root))
