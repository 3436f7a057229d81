# CPU demo of generation on MARVEL tokens: a tiny MaskGIT (64 wide, 2 blocks)
# over the 8 x 2 ids of the single-stage demo tokenizer, conditioned on the
# photo (18 classes: one per scikit-image photo), so that sampling class c
# should give back photo c. Same token layout as the ImageNet generators: 16
# positions in position-major order, per-depth vocabularies of 4,096 ids.
#   python tools/export_tokens.py \
#       projects/MARVEL/configs/marvel_rlfq-4k-x2_vit-tiny-k8-pixel_1xb8-300_skimage-64.py \
#       work_dirs/marvel_rlfq-4k-x2_vit-tiny-k8-pixel_1xb8-300_skimage-64/iter_300.pth \
#       --data val --out work_dirs/tokens/marvel-x2-tiny-skimage
#   python tools/train.py projects/MARVEL/configs/maskgit_rlfq-4k-x2_bert-tiny_1xb16-1k_skimage-tokens.py
#   python tools/sample.py projects/MARVEL/configs/maskgit_rlfq-4k-x2_bert-tiny_1xb16-1k_skimage-tokens.py \
#       work_dirs/maskgit_rlfq-4k-x2_bert-tiny_1xb16-1k_skimage-tokens/iter_1000.pth \
#       --out work_dirs/samples/marvel-x2-tiny.npz --num-images 36
# The ImageNet generator recipe (x1 config) at demo scale; checkpoints hold
# the EMA weights (EMAHook), which sampling then uses.
_base_ = ['./maskgit_rlfq-4k-x1_bert-titok-l32_32xb64-500k_in1k-256.py']
depth = 2
token_root = 'work_dirs/tokens/marvel-x2-tiny-skimage'
tokenizer = dict(
    config='projects/MARVEL/configs/'
    'marvel_rlfq-4k-x2_vit-tiny-k8-pixel_1xb8-300_skimage-64.py',
    checkpoint='work_dirs/'
    'marvel_rlfq-4k-x2_vit-tiny-k8-pixel_1xb8-300_skimage-64/iter_300.pth')
model = dict(arch=dict(_delete_=True, dim=64, depth=2, num_heads=4,
                       ffn_dim=256),
             num_classes=18,
             vocab_size=4096 * depth,
             token_shape=(8, depth),
             # MaskGIT's sampling: TiTok's Gumbel-max tokens at temperature
             # 4.5 are far noisier for this tiny model (67 % vs 99 % of the
             # ids of the photo)
             sampling_mode='maskgit',
             softmax_temperature_annealing=False,
             choice_temperature=4.5,
             dropout=0.0,
             attn_dropout=0.0,
             sampler=dict(guidance_scale=2.0))
train_dataloader = dict(batch_size=16, num_workers=0,
                        persistent_workers=False,
                        dataset=dict(data_root=token_root))
# fp32 on the CPU (the recipe's bf16 autocast is for the GPU runs)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.96),
                   weight_decay=0.0),
    clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
         end=100),
]
train_cfg = dict(max_iters=1000)
default_hooks = dict(checkpoint=dict(interval=500))
custom_hooks = [dict(type='EMAHook', momentum=0.01)]
