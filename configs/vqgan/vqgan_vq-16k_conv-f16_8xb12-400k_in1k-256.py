# Taming VQGAN f16-16384 on ImageNet 256 (Esser et al. 2021; README rFID
# 4.98 for taming's released checkpoint). G and D: Adam (0.5, 0.9) with
# taming's learning rate 4.5e-6 x total batch size, constant. Taming did not
# publish its schedule length; 400k iterations at 8x12 is ~3.7 epochs per
# 100k, i.e. ~37 epochs.
_base_ = [
    '../_base_/models/vqgan_conv-f16.py',
    '../_base_/datasets/imagenet_256.py',
    '../_base_/default_runtime.py',
]
num_gpus, batch_per_gpu = 8, 12
lr = 4.5e-6 * num_gpus * batch_per_gpu
train_dataloader = dict(batch_size=batch_per_gpu)
optim_wrapper = dict(
    constructor='MultiPartOptimWrapperConstructor',
    generator=dict(type='OptimWrapper',
                   optimizer=dict(type='Adam', lr=lr, betas=(0.5, 0.9))),
    discriminator=dict(type='OptimWrapper',
                       optimizer=dict(type='Adam', lr=lr, betas=(0.5, 0.9))))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=400000,
                 val_interval=10000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(checkpoint=dict(interval=10000))
custom_hooks = [
    dict(type='CodebookUsageHook', interval=1000),
    dict(type='ReconstructionGridHook', interval=5000, num_images=8),
]
