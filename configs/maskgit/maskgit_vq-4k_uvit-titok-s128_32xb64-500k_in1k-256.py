# MaskGIT generator in TiTok's U-ViT form (Yu et al. 2024, TiTok-S-128's
# generator: hidden 1024, 20 layers with long skips) over 128 1-D tokens of a
# 4096-code tokenizer; 294,990,848 parameters (tested). TiTok reports gFID
# 1.97. Recipe: _base_/recipes/titok_generator.py (TiTok's sampler).
# Sampling as bytedance/1d-tokenizer configs/infer/TiTok/titok_s128.yaml
# (commit 942a96fbdd873780179d1b78d5462911528bf8c8) with
# sample_imagenet_titok.py: 64 steps, randomize_temperature 2.8, guidance
# 6.9 with 'power-cosine' decay. There the guided logits are
# l_u + s_t (l_c - l_u) with s_t = 1 + (6.9 - 1) (1 - cos(pi (t/T)^3)) / 2
# (guidance_scale_pow 3.0, generate's default), which is vistok's
# guidance_scale 6.9 (not 1 + 6.9 as for 'linear') with guidance_power 3.
# Tokens: as the B-64 config, with the S-128 stage-2 tokenizer
# (configs/titok/titok_vq-4k_s128-stage2_8xb32-500k_in1k-256.py).
_base_ = ['../_base_/recipes/titok_generator.py']
token_root = 'data/tokens/imagenet-train-titok-s128'
model = dict(
    arch='titok-uvit',
    vocab_size=4096,
    token_shape=(128, ),
    # UViTBert builds its UViTBlocks without drop / attn_drop and has no
    # embedding dropout (modeling/maskgit.py; the yaml's 0.1 is unused)
    dropout=0.0,
    attn_dropout=0.0,
    steps=64,
    choice_temperature=2.8,
    sampler=dict(type='TokenSampler', temperature=1.0, guidance_scale=6.9,
                 guidance_schedule='power_cosine', guidance_power=3.0),
)
train_dataloader = dict(dataset=dict(data_root=token_root))
