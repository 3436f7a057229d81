# VAR-d17 on ImageFolder tokens (README "362M": the 17 blocks alone are
# 362,484,897 parameters; the generator is 375,258,593 with its embeddings and
# the two parallel branch heads, tested): next-scale prediction over the 286
# positions of the MSVR10P2 scales, two ids per position predicted by parallel
# heads and sampled independently per branch. README recipe: global batch 768,
# lr 8e-5 x 768 / 256, final lr ratio 0.01, AdamW wd 0.05, AdaLN gamma init
# 1e-4, no label smoothing, 350 epochs; sampling cfg 3.25 ramped linearly over
# the scales (vistok guidance_scale 1 + 3.25), top-k 750, top-p 0.95.
# `quantizer` comes from _base_/msvr10p2.py (the tokenizer's); its weights from
# the tokenizer's EMA export:
#   python tools/model_converters/export_safetensors.py TOKENIZER_CKPT \
#       checkpoints/imagefolder_msvr10p2-4k_ema.safetensors --ema
_base_ = [
    '../../../configs/_base_/datasets/imagenet_tokens.py',
    '../../../configs/_base_/schedules/adamw_generator.py',
    '../../../configs/_base_/default_runtime.py',
    './_base_/msvr10p2.py',
]
token_root = 'data/tokens/imagenet-train-imagefolder-msvr10p2-4k'
num_gpus, batch_per_gpu = 8, 96
iters_per_epoch = 1281167 // (num_gpus * batch_per_gpu)
max_iters = 350 * iters_per_epoch
model = dict(
    type='VARGenerator',
    depth=17,
    num_classes=1000,
    class_dropout_prob=0.1,
    patch_nums={{_base_.scales}},
    num_branches={{_base_.num_branches}},
    quantizer={{_base_.quantizer}},
    quantizer_weights='checkpoints/imagefolder_msvr10p2-4k_ema.safetensors',
    init_adaln_gamma=1e-4,
    label_smoothing=0.0,
    sampler=dict(type='TokenSampler', temperature=1.0, top_k=750, top_p=0.95,
                 guidance_scale=4.25, guidance_schedule='linear'))
train_dataloader = dict(batch_size=batch_per_gpu,
                        dataset=dict(data_root=token_root))
optim_wrapper = dict(optimizer=dict(lr=8e-5 * num_gpus * batch_per_gpu / 256,
                                    betas=(0.9, 0.95), weight_decay=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0,
         end=3 * iters_per_epoch),
    dict(type='LinearLR', start_factor=1.0, end_factor=0.01, by_epoch=False,
         begin=3 * iters_per_epoch, end=max_iters),
]
train_cfg = dict(max_iters=max_iters)
