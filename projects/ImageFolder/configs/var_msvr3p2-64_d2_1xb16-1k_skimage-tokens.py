# CPU demo of generation on ImageFolder tokens: a tiny VAR (depth 2, width
# 64) with two parallel branch heads over the 1 + 4 + 16 = 21 positions of
# the tiny tokenizer (imagefolder_msvr3p2-64_vit-tiny_1xb8-300_skimage-64.py),
# conditioned on the photo (18 classes), so that sampling class c should give
# back photo c. The quantizer config is the tokenizer's (one source); its
# weights come from the tokenizer's EMA export:
#   python tools/export_tokens.py \
#       projects/ImageFolder/configs/imagefolder_msvr3p2-64_vit-tiny_1xb8-300_skimage-64.py \
#       work_dirs/imagefolder_msvr3p2-64_vit-tiny_1xb8-300_skimage-64/iter_300.pth \
#       --data val --out work_dirs/tokens/imagefolder-tiny-skimage
#   python tools/model_converters/export_safetensors.py \
#       work_dirs/imagefolder_msvr3p2-64_vit-tiny_1xb8-300_skimage-64/iter_300.pth \
#       work_dirs/imagefolder_tiny/tokenizer_ema.safetensors --ema
#   python tools/train.py projects/ImageFolder/configs/var_msvr3p2-64_d2_1xb16-1k_skimage-tokens.py
#   python tools/sample.py projects/ImageFolder/configs/var_msvr3p2-64_d2_1xb16-1k_skimage-tokens.py \
#       work_dirs/var_msvr3p2-64_d2_1xb16-1k_skimage-tokens/iter_1000.pth \
#       --out work_dirs/samples/imagefolder-tiny.npz --num-images 36
_base_ = [
    '../../../configs/_base_/datasets/imagenet_tokens.py',
    '../../../configs/_base_/schedules/adamw_generator.py',
    '../../../configs/_base_/default_runtime.py',
    './_base_/tiny_quantizer.py',
]
token_root = 'work_dirs/tokens/imagefolder-tiny-skimage'
tokenizer = dict(
    config='projects/ImageFolder/configs/'
    'imagefolder_msvr3p2-64_vit-tiny_1xb8-300_skimage-64.py',
    checkpoint='work_dirs/'
    'imagefolder_msvr3p2-64_vit-tiny_1xb8-300_skimage-64/iter_300.pth')
model = dict(
    type='VARGenerator',
    depth=2,
    embed_dim=64,
    num_heads=4,
    num_classes=18,
    class_dropout_prob=0.1,
    patch_nums={{_base_.scales}},
    num_branches={{_base_.num_branches}},
    quantizer={{_base_.quantizer}},
    quantizer_weights='work_dirs/imagefolder_tiny/tokenizer_ema.safetensors',
    sampler=dict(type='TokenSampler', temperature=1.0, guidance_scale=2.0,
                 guidance_schedule='linear'))
train_dataloader = dict(batch_size=16, num_workers=0,
                        persistent_workers=False,
                        dataset=dict(data_root=token_root))
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
         end=100),
]
train_cfg = dict(max_iters=1000)
default_hooks = dict(checkpoint=dict(interval=500))
