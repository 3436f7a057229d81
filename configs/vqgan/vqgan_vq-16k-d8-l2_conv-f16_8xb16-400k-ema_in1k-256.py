# LlamaGen-style VQGAN (Sun et al. 2024, "Autoregressive Model Beats
# Diffusion"): the taming recipe with l2-normalised 8-dimensional codes
# (cosine lookup, 16384 codes; LlamaGen reports ~97 % usage and rFID 2.19 for
# its vq_ds16_c2i), L2 reconstruction, a fixed GAN weight 0.5 starting at
# iteration 20k, AdamW (0.9, 0.95) lr 1e-4 with weight decay 0.05, gradient
# clipping 1.0, global batch 128 and an EMA copy of the generator used for
# validation.
_base_ = ['./vqgan_vq-16k_conv-f16_8xb12-400k_in1k-256.py']
batch_per_gpu = 16
train_dataloader = dict(batch_size=batch_per_gpu)
model = dict(
    quantizer=dict(embed_dim=8, use_l2_norm=True),
    reconstruction_loss=dict(type='MSELoss', loss_weight=1.0),
    adversarial_loss=dict(generator_weight=0.5, adaptive_weight=False,
                          start_iter=20000),
    ema=dict(decay=0.9999, use_for_val=True),
)
optim_wrapper = dict(
    generator=dict(
        optimizer=dict(_delete_=True, type='AdamW', lr=1e-4,
                       betas=(0.9, 0.95), weight_decay=0.05),
        clip_grad=dict(max_norm=1.0)),
    discriminator=dict(
        optimizer=dict(_delete_=True, type='AdamW', lr=1e-4,
                       betas=(0.9, 0.95), weight_decay=0.05),
        clip_grad=dict(max_norm=1.0)))
