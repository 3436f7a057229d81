# The quick-start tokenizer (tools/run_demo.sh): the demo VQ-VAE's conv
# encoder / decoder (f4: 64x64 images -> 16x16 = 256 tokens) with a finite
# scalar quantizer (Mentzer et al. 2023; levels 8, 5, 5, 5 = 1,000 codes,
# log2(1000) = 9.97 bits per token; no codebook to collapse), trained with
# L2 (PSNR is its log) for 1,500 iterations, Adam 1e-3 with a 50-iteration
# warm-up and a cosine decay to 1e-5. On the embedded shapes, 2 quiet cores:
# numbers in the README's quick start; candidates measured in
# configs/vqvae/README.md.
_base_ = ['./vqvae_vq-512_conv-f4_1xb8-2k_shapes-64.py']
max_iters = 1500
model = dict(
    quantizer=dict(_delete_=True, type='FiniteScalarQuantizer',
                   levels=[8, 5, 5, 5], in_channels=32),
    reconstruction_loss=dict(type='MSELoss', loss_weight=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters,
         T_max=max_iters - 50, eta_min=1e-5),
]
train_cfg = dict(max_iters=max_iters, val_interval=500)
default_hooks = dict(checkpoint=dict(interval=max_iters))
