# ImageFolder tokenizer recipe (MSVR10P2; lxa9867/ImageFolder configs and
# tokenizer/tokenizer_image/{xqgan_train.py,vq_loss.py}; notes B.2-B.3):
# DINOv2 ViT-B/14 encoder and decoder re-created at 256 px / patch 16 (drop
# path 0.1, fine-tuned), 2 x 11 x 11 latent tokens, the MSVR10P2 quantizer;
# loss L2 1.0 + LPIPS 1.0 + hinge GAN x adaptive weight (clamped to
# [0, 1e4]) x 0.5 + codebook + commitment 0.25 + semantic InfoNCE 0.1 on the
# last branch (projected DINOv2 class token, scale 1.0, unnormalised); the
# DINO(v1) ViT-S/16 feature discriminator with DiffAugment and LeCam 0.001,
# from epoch 56 of 200. AdamW (0.9, 0.95): generator lr 3e-5 x batch / 128,
# wd 0; discriminator lr 1e-4 x batch / 128, wd 5e-4; 1 warm-up epoch then
# cosine to 5e-5; EMA 0.9999; bf16; ADM random crop (short side 256..320,
# crop 256) + horizontal flip; global batch 1024. Gradient clipping is off:
# the official script's two grad-clip flags share one destination and the
# default 0.0 wins (notes B.3).
_base_ = [
    '../../../../configs/_base_/datasets/imagenet_256.py',
    '../../../../configs/_base_/default_runtime.py',
    './msvr10p2.py',
]
custom_imports = dict(imports=['projects.ImageFolder.imagefolder'],
                      allow_failed_imports=False)

# local weight files (see the README: how to get them)
dinov2_weights_path = 'checkpoints/dinov2_vitb14_timm.pth'
dino_weights_path = 'checkpoints/dino_vits16_timm.pth'
lpips_trunk_path = 'checkpoints/vgg16-397923af.pth'

latent_grid_size = 11
vit = dict(model_name='vit_base_patch14_dinov2',
           weights_path=dinov2_weights_path,
           # DINOv2's checkpoint grid: 518 px / patch 14 = 37 x 37
           checkpoint_grid_size=(37, 37),
           model_kwargs=dict(img_size=256, patch_size=16, drop_path_rate=0.1),
           latent_grid_size=latent_grid_size,
           num_branches={{_base_.num_branches}},
           code_dim={{_base_.code_dim}})
model = dict(
    type='ImageFolderTokenizer',
    encoder=dict(type='DINOv2LatentEncoder', **vit),
    quantizer={{_base_.quantizer}},
    decoder=dict(type='DINOv2PixelDecoder', **vit),
    semantic_loss=dict(
        type='SemanticRegularizationLoss',
        num_branches={{_base_.num_branches}},
        branch_channels={{_base_.code_dim}},
        target=-1,
        projector='separate',
        teacher=dict(model_name='vit_base_patch14_dinov2',
                     checkpoint_grid_size=(37, 37),
                     model_kwargs=dict(img_size=256, patch_size=16)),
        teacher_weights_path=dinov2_weights_path,
        logit_scale=1.0,
        loss_weight=0.1),
    reconstruction_loss=dict(type='MSELoss', loss_weight=1.0),
    perceptual_loss=dict(type='LPIPS', trunk_path=lpips_trunk_path,
                         loss_weight=1.0),
    discriminator=dict(type='FrozenFeatureDiscriminator',
                       model_name='vit_small_patch16_224.dino',
                       weights_path=dino_weights_path,
                       head_norm='batch'),
    adversarial_loss=dict(type='AdversarialLoss', loss_type='hinge',
                          generator_weight=0.5, adaptive_weight=True,
                          adaptive_weight_max=1e4,
                          discriminator_weight=1.0,
                          lecam_weight=0.001, lecam_decay=0.999,
                          start_iter=0),  # set below from the schedule
    ema=dict(decay=0.9999, use_for_val=True),
)

num_gpus, batch_per_gpu = 8, 128
batch_size = num_gpus * batch_per_gpu
iters_per_epoch = 1281167 // batch_size
max_epochs, disc_start_epoch = 200, 56
max_iters = max_epochs * iters_per_epoch
disc_start = round(disc_start_epoch / max_epochs * max_iters)
model.update(adversarial_loss=dict(model['adversarial_loss'],
                                   start_iter=disc_start))

train_pipeline = [
    dict(type='ADMRandomCrop', size=256),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=batch_per_gpu,
    dataset=dict(pipeline=[dict(type='LoadImageRGB')] + train_pipeline))

optim_wrapper = dict(
    constructor='MultiPartOptimWrapperConstructor',
    generator=dict(type='AmpOptimWrapper', dtype='bfloat16',
                   optimizer=dict(type='AdamW', lr=3e-5 * batch_size / 128,
                                  betas=(0.9, 0.95), weight_decay=0.0)),
    discriminator=dict(type='AmpOptimWrapper', dtype='bfloat16',
                       optimizer=dict(type='AdamW',
                                      lr=1e-4 * batch_size / 128,
                                      betas=(0.9, 0.95),
                                      weight_decay=5e-4)))
param_scheduler = dict(
    generator=[
        dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0,
             end=iters_per_epoch),
        dict(type='CosineAnnealingLR', eta_min=5e-5, by_epoch=False,
             begin=iters_per_epoch, end=max_iters),
    ],
    # the official discriminator schedule starts with it: 2 % warm-up
    discriminator=[
        dict(type='LinearLR', start_factor=1e-3, by_epoch=False,
             begin=disc_start, end=disc_start + max_iters // 50),
        dict(type='CosineAnnealingLR', eta_min=5e-5, by_epoch=False,
             begin=disc_start + max_iters // 50, end=max_iters),
    ])
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=10 * iters_per_epoch)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(checkpoint=dict(interval=10 * iters_per_epoch))
custom_hooks = [dict(type='CodebookUsageHook')]
