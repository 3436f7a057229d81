# CPU demo of the VQGAN recipe: the small f4 tokenizer of the VQ-VAE demo
# trained on the photos shipped with scikit-image, with L1 + a small PatchGAN
# (hinge loss, adaptive weight) that starts at iteration 500 and an EMA copy
# used for validation. Runs in a few minutes on 2 CPU cores; see
# configs/vqgan/README.md for its numbers. The `_lpips` variant adds LPIPS
# (needs the VGG16 file).
_base_ = ['../vqvae/vqvae_vq-512_conv-f4_1xb8-2k_skimage-64.py']
model = dict(
    discriminator=dict(type='PatchGANDiscriminator', in_channels=3,
                       base_channels=32, num_layers=2, norm='batch'),
    adversarial_loss=dict(type='AdversarialLoss', loss_type='hinge',
                          generator_weight=0.1, adaptive_weight=True,
                          start_iter=500),
    ema=dict(decay=0.99, use_for_val=True),
)
optim_wrapper = dict(
    _delete_=True,
    constructor='MultiPartOptimWrapperConstructor',
    generator=dict(type='OptimWrapper',
                   optimizer=dict(type='Adam', lr=1e-3, betas=(0.5, 0.9)),
                   clip_grad=dict(max_norm=1.0)),
    discriminator=dict(type='OptimWrapper',
                       optimizer=dict(type='Adam', lr=2e-4,
                                      betas=(0.5, 0.9))))
param_scheduler = dict(
    _delete_=True,
    generator=[dict(type='LinearLR', start_factor=0.1, by_epoch=False,
                    begin=0, end=50)],
    discriminator=[dict(type='ConstantLR', factor=1.0, by_epoch=False)])
custom_hooks = [
    dict(type='CodebookUsageHook', interval=100),
    dict(type='ReconstructionGridHook', interval=500, num_images=8),
]
val_evaluator = [dict(type='PSNR'), dict(type='SSIM'),
                 dict(type='CodebookUsage')]
test_evaluator = val_evaluator
