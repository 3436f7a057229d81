# The tiny tokenizer trained as a VQGAN: a small PatchGAN from iteration 3,
# LeCam, an EMA copy, two optimizers with their own schedules.
_base_ = ['./tiny_vqvae.py']

model = dict(
    discriminator=dict(type='PatchGANDiscriminator', in_channels=3,
                       base_channels=8, num_layers=2, norm='group',
                       num_groups=4),
    adversarial_loss=dict(type='AdversarialLoss', generator_weight=0.5,
                          start_iter=3, lecam_weight=0.01),
    ema=dict(decay=0.9),
)
optim_wrapper = dict(
    _delete_=True,
    constructor='MultiPartOptimWrapperConstructor',
    generator=dict(type='OptimWrapper',
                   optimizer=dict(type='Adam', lr=1e-3, betas=(0.5, 0.9)),
                   clip_grad=dict(max_norm=1.0)),
    discriminator=dict(type='OptimWrapper',
                       optimizer=dict(type='Adam', lr=1e-3,
                                      betas=(0.5, 0.9))))
param_scheduler = dict(
    _delete_=True,
    generator=[dict(type='LinearLR', start_factor=0.1, by_epoch=False,
                    begin=0, end=5)],
    discriminator=[dict(type='LinearLR', start_factor=0.5, by_epoch=False,
                        begin=0, end=8)])
