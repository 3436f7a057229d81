# MaskGIT generator of TiTok-L-32 (Yu et al. 2024): TiTok's ImageBert (BERT
# layout: post-LN, LayerNorm eps 1e-12; hidden 768, 24 layers, 16 heads, MLP
# 3072, dropout 0.1) over the 32 1-D tokens of the 4096-code L-32 tokenizer.
# TiTok reports gFID 2.77. Recipe: _base_/recipes/titok_generator.py.
# Sampling as bytedance/1d-tokenizer configs/infer/TiTok/titok_l32.yaml
# (commit 942a96fbdd873780179d1b78d5462911528bf8c8) with
# sample_imagenet_titok.py: 8 steps, randomize_temperature 9.5, guidance 4.5
# with linear decay (vistok's guidance_scale 1 + 4.5 on the 'linear'
# schedule), softmax temperature annealing (the recipe's).
# Tokens: as the B-64 config, with the L-32 stage-2 tokenizer
# (configs/titok/titok_vq-4k_l32-stage2_8xb32-500k_in1k-256.py).
_base_ = ['./maskgit_vq-4k_bert-titok-b64_32xb64-500k_in1k-256.py']
token_root = 'data/tokens/imagenet-train-titok-l32'
model = dict(
    token_shape=(32, ),
    choice_temperature=9.5,
    sampler=dict(guidance_scale=5.5),
)
train_dataloader = dict(dataset=dict(data_root=token_root))
