# ViT-VQGAN base of thuanz123/enhancing-transformers on ImageNet 256
# (configs/imagenet_vitvq_base.yaml; released weights
# thuanz123/vitvqgan-imagenet-base): 32 x 32 tokens of 8192 l2-normalised
# 32-d codes. Test half: the released weights, converted with
# tools/model_converters/vitvqgan.py (the script's default config). Training
# half: the official main.py defaults (1 GPU, the yaml's batch 8, AdamW
# (0.9, 0.99) wd 1e-4 at a constant 4.5e-6, 100 epochs, resize 256 + random
# 256 crop + flip) without the StyleGAN discriminator (see the base file).
# See README.md.
_base_ = [
    '../_base_/models/vitvqgan_vit-b-p8.py',
    '../_base_/datasets/imagenet_256.py',
    '../_base_/default_runtime.py',
]
num_gpus, batch_per_gpu, epochs = 1, 8, 100
imagenet_train_images = 1281167
max_iters = epochs * -(-imagenet_train_images // (num_gpus * batch_per_gpu))
train_pipeline = [
    dict(type='LoadImageRGB'),
    dict(type='ResizeShortEdge', size={{_base_.image_size}},
         interpolation='bilinear'),
    dict(type='RandomCrop', size={{_base_.image_size}}),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=batch_per_gpu,
                        dataset=dict(pipeline=train_pipeline))
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=4.5e-6,
                                    betas=(0.9, 0.99), weight_decay=1e-4))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=50000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(checkpoint=dict(interval=50000))
custom_hooks = [
    dict(type='CodebookUsageHook', interval=1000),
    dict(type='ReconstructionGridHook', interval=5000, num_images=8),
]
