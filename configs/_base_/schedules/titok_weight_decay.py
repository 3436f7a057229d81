# TiTok's weight-decay exemptions, for its tokenizers (both stages, generator
# and discriminator) and its generators (bytedance/1d-tokenizer
# utils/train_utils.py create_optimizer at commit 942a96fb, used by
# scripts/train_titok.py and scripts/train_maskgit.py): a parameter gets no
# weight decay when
#   p.ndim < 2 or its name contains 'ln', 'bias', 'latent_tokens',
#   'mask_token', 'embedding', 'norm', 'gamma' or 'embed',
# every other one the optimizer's weight_decay. In mmengine terms
# (DefaultOptimWrapperConstructor): each name fragment is a custom key with
# decay_mult 0 (custom keys match substrings of the full parameter name) and
# flat_decay_mult 0 covers the 1-D parameters (vistok's TiTok / MaskGIT
# models have no 0-d parameter). 'codebook' is vistok's name of the official
# `quantize.embedding` / `pixel_quantize.embedding` tables
# (`quantizer.codebook`, `pixel_codebook.weight`; see
# vistok/apis/converters/titok.py), which the official rule exempts by their
# 'embedding'. Every other official name maps to a vistok name with the same
# outcome (tests/test_configs_titok_recipe.py checks it parameter by
# parameter through the converter's key mapping).
titok_no_decay = dict(decay_mult=0.0)
titok_paramwise_cfg = dict(
    custom_keys={
        'ln': titok_no_decay,
        'bias': titok_no_decay,
        'latent_tokens': titok_no_decay,
        'mask_token': titok_no_decay,
        'embedding': titok_no_decay,
        'norm': titok_no_decay,
        'gamma': titok_no_decay,
        'embed': titok_no_decay,
        'codebook': titok_no_decay,
    },
    flat_decay_mult=0.0)
