# MaskGIT generator on MARVEL-L-32 tokens (TiTok-L-32's ImageBert: hidden
# 768, 24 layers, 16 heads) with TiTok's generator recipe
# (configs/_base_/recipes/titok_generator.py); sampling 8 steps, Gumbel
# temperature 9.5, cfg 4.5 linear. MARVEL published no generator: this is
# TiTok's L-32 recipe applied to MARVEL's tokens.
# Token layout: the tokenizer's ids (B, 32, D) — D residual LFQ depths of
# 4,096 codes each — are one sequence of 32 x D positions in position-major
# order (position k, depth d at index k*D + d); the id at depth d is embedded
# and predicted as d*4096 + id (vocabulary D x 4096), and a depth-d position
# is only ever predicted among its own depth's 4,096 ids, so samples decode
# directly with the tokenizer. Export the tokens with tools/export_tokens.py
# and the MARVEL-L-32 stage-2 config / checkpoint.
_base_ = ['../../../configs/_base_/recipes/titok_generator.py']
depth = 1
token_root = 'data/tokens/imagenet-train-marvel-l32-x1'
model = dict(
    arch='titok-bert',
    vocab_size=4096 * depth,
    depth_vocab_size=4096,
    token_shape=(32, depth),
    steps=8,
    # TiTok's sampling: Gumbel-max tokens and raw-logit confidence at a
    # temperature annealed from 9.5; its cfg 4.5 (l_c + 4.5 (l_c - l_u))
    # with linear decay is vistok's guidance_scale 5.5, 'linear'
    sampling_mode='titok',
    choice_temperature=9.5,
    sampler=dict(type='TokenSampler', temperature=1.0, guidance_scale=5.5,
                 guidance_schedule='linear'),
)
train_dataloader = dict(dataset=dict(data_root=token_root))
