# MaskGIT generator of TiTok-B-64 (Yu et al. 2024): TiTok's ImageBert (BERT
# layout: post-LN, LayerNorm eps 1e-12; hidden 768, 24 layers, 16 heads, MLP
# 3072, dropout 0.1) over the 64 1-D tokens of the 4096-code B-64 tokenizer.
# TiTok reports gFID 2.48. Recipe: _base_/recipes/titok_generator.py.
# Sampling as bytedance/1d-tokenizer configs/infer/TiTok/titok_b64.yaml
# (commit 942a96fbdd873780179d1b78d5462911528bf8c8) with
# sample_imagenet_titok.py: 8 steps, randomize_temperature 11.0, guidance
# 3.0 with linear decay (the official l_c + s_t (l_c - l_u), s_t = 3.0 t / 8,
# is vistok's guidance_scale 1 + 3.0 on the 'linear' schedule), softmax
# temperature annealing (the recipe's).
# Tokens: the B-64 stage-2 tokenizer's ids of the centre crops of ImageNet
# train and of their flips, one export (see the recipe). The tokenizer's
# val pipeline is the official generator's before the flip (resize short
# side 256 bicubic, centre crop 256), so it is pointed at the train images:
#   python tools/export_tokens.py \
#       configs/titok/titok_vq-4k_b64-stage2_8xb32-500k_in1k-256.py \
#       CHECKPOINT --data val --hflip-pairs \
#       --cfg-options val_dataloader.dataset.data_prefix.img_path=train \
#       --out data/tokens/imagenet-train-titok-b64
_base_ = ['../_base_/recipes/titok_generator.py']
token_root = 'data/tokens/imagenet-train-titok-b64'
model = dict(
    arch='titok-imagebert',
    norm_eps=1e-12,
    vocab_size=4096,
    token_shape=(64, ),
    steps=8,
    choice_temperature=11.0,
    sampler=dict(type='TokenSampler', temperature=1.0, guidance_scale=4.0,
                 guidance_schedule='linear'),
)
train_dataloader = dict(dataset=dict(data_root=token_root))
