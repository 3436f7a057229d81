# UniCode HQ-VAE (8x8 + 16x16 = 320 ids per image) on the full 32,000-token
# LLaMA-2 / Vicuna-7B vocabulary (4,096-d codes). Recipe (the official
# configs/ folder is not in the repository: the dataclass defaults of
# src/vae/utils/config1.py, the scripts' "bsz384" and the released
# "epo45+5"): Adam lr 1e-4 (betas (0.5, 0.9): taming's, inferred), grad clip
# 1.0, total batch 384 = 8 x 48, 45 epochs of codebook mixing (lambda
# 0 -> 1) then 5 tail epochs on the frozen LLM codebook (CodebookMixHook),
# constant lr (the official warm-up / cosine settings are not published).
# ~858K images (LCS-558K + ~300K of LLaVA-mix-665K) per epoch. Use --amp
# for the official fp16.
_base_ = ['./_base_/unicode_hqvae.py', './_base_/llava_images_256.py',
          '../../../configs/_base_/default_runtime.py']
custom_imports = dict(imports=['projects.UniCode.unicode'],
                      allow_failed_imports=False)
iters_per_epoch = 858000 // (8 * 48)
mix_epochs, tail_epochs = 45, 5
max_iters = (mix_epochs + tail_epochs) * iters_per_epoch
lr = 1e-4
optim_wrapper = dict(
    constructor='MultiPartOptimWrapperConstructor',
    generator=dict(type='OptimWrapper', clip_grad=dict(max_norm=1.0),
                   optimizer=dict(type='Adam', lr=lr, betas=(0.5, 0.9))),
    discriminator=dict(type='OptimWrapper', clip_grad=dict(max_norm=1.0),
                       optimizer=dict(type='Adam', lr=lr,
                                      betas=(0.5, 0.9))))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=iters_per_epoch)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(checkpoint=dict(interval=iters_per_epoch))
custom_hooks = [
    dict(type='CodebookMixHook', tail_iters=tail_epochs * iters_per_epoch,
         adversarial_scale=(1.0, -0.9)),
    dict(type='CodebookUsageHook', interval=1000),
    dict(type='ReconstructionGridHook', interval=5000, num_images=8),
]
