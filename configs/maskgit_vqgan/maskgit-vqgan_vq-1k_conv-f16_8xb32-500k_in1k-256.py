# MaskGIT-VQGAN on ImageNet 256. Test half: the released weights (TiTok's
# maskgit-vqgan-imagenet-f16-256.bin, converted with
# tools/model_converters/maskgit_vqgan.py; TiTok reports rFID 2.28). Training
# half: MaskGIT did not publish its tokenizer recipe; this is TiTok's stage-2
# pixel recipe (which fine-tunes this decoder), applied to the whole
# tokenizer from the converted weights: L2 + 0.1 x ConvNeXt-S logit loss,
# MaskGIT discriminator (hinge, fixed weight 0.01 from 20k, LeCam 0.001),
# every term on [0, 1] images as in TiTok (../_base_/losses/titok_pixel.py),
# AdamW lr 1e-4 (0.9, 0.999) wd 1e-4, 5k warm-up then cosine to 1e-5 over
# 500k iterations, 8 x 32 images, EMA 0.999. See README.md.
_base_ = [
    '../_base_/models/maskgit_vqgan_conv-f16.py',
    '../_base_/datasets/imagenet_256.py',
    '../_base_/default_runtime.py',
    '../_base_/losses/titok_pixel.py',
]
# the converted release (see README.md)
load_from = 'checkpoints/maskgit-vqgan-imagenet-f16-256_vistok.pth'
model = dict(
    reconstruction_loss={{_base_.titok_reconstruction_loss}},
    perceptual_loss={{_base_.titok_perceptual_loss}},
    discriminator={{_base_.titok_discriminator}},
    adversarial_loss={{_base_.titok_adversarial_loss}},
    ema=dict(decay=0.999, use_for_val=True),
)
num_gpus, batch_per_gpu = 8, 32
max_iters, warmup_iters = 500000, 5000
train_dataloader = dict(batch_size=batch_per_gpu)
adamw = dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4)
optim_wrapper = dict(
    constructor='MultiPartOptimWrapperConstructor',
    generator=dict(type='OptimWrapper', optimizer=adamw,
                   clip_grad=dict(max_norm=1.0)),
    discriminator=dict(type='OptimWrapper', optimizer=adamw,
                       clip_grad=dict(max_norm=1.0)))
warmup_cosine = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0,
         end=warmup_iters),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=False,
         begin=warmup_iters, end=max_iters),
]
param_scheduler = dict(generator=warmup_cosine, discriminator=warmup_cosine)
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=10000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(checkpoint=dict(interval=10000))
custom_hooks = [
    dict(type='CodebookUsageHook', interval=1000),
    dict(type='ReconstructionGridHook', interval=5000, num_images=8),
]
