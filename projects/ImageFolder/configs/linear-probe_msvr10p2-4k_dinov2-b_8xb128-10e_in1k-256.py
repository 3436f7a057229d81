# Linear probe of the MSVR10P2-4096 tokenizer (README ablation table: 58.0
# top-1 for row 8, 40.5 for row 6; 11.3 for VAR's tokenizer, issue 9): the
# frozen tokenizer's quantized map of the semantic (last) branch, averaged
# over the 11 x 11 positions, -> BatchNorm1d(affine=False) + Linear to the
# 1,000 classes; the official tokenizer/tokenizer_image/linear_probing.py
# defaults (commit 42fd2e7): AdamW lr 1e-4, wd 1e-4 (its --beta1/--beta2 are
# not passed to timm's create_optimizer_v2, so betas are (0.9, 0.999)), one
# warm-up epoch, cosine to min_lr 5e-5 (--lr_scheduler cosine), 10 epochs;
# batch 1024 here (the script's per-GPU default is 4); centre-crop
# evaluation with top-1 / top-5 accuracy.
# Set `tokenizer_checkpoint` to the trained tokenizer (.pth or .safetensors).
_base_ = ['./imagefolder_msvr10p2-4k_dinov2-b_8xb128-200e_in1k-256.py']
tokenizer_checkpoint = ('work_dirs/imagefolder_msvr10p2-4k_dinov2-b_'
                        '8xb128-200e_in1k-256/iter_250200.pth')
# the tokenizer without what only its training needs (losses, teacher,
# discriminator); its EMA copy is what is probed, as its validation does
model = dict(_delete_=True, type='LinearProbe',
             tokenizer=dict(type='ImageFolderTokenizer',
                            encoder={{_base_.model.encoder}},
                            quantizer={{_base_.model.quantizer}},
                            decoder={{_base_.model.decoder}},
                            ema={{_base_.model.ema}}),
             tokenizer_checkpoint=tokenizer_checkpoint, num_classes=1000,
             branch=-1)
num_gpus, batch_per_gpu = 8, 128
iters_per_epoch = 1281167 // (num_gpus * batch_per_gpu)
max_iters = 10 * iters_per_epoch
train_pipeline = [
    dict(type='RandomResizedCrop', size=256, scale=(0.08, 1.0)),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=batch_per_gpu,
    dataset=dict(pipeline=[dict(type='LoadImageRGB')] + train_pipeline))
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999),
                   weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0,
         end=iters_per_epoch),
    dict(type='CosineAnnealingLR', eta_min=5e-5, by_epoch=False,
         begin=iters_per_epoch, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=iters_per_epoch)
default_hooks = dict(checkpoint=dict(interval=iters_per_epoch))
custom_hooks = []
val_evaluator = dict(_delete_=True, type='Accuracy', topk=(1, 5))
test_evaluator = val_evaluator
