# The tokenizer of the tiny SeiT++ runs (tools/compare_pretraining.py): the
# quick-start VQ-VAE on the embedded procedural shapes (64 px -> 16 x 16
# tokens of 32-d l2-normalised codes, as SeiT's) with 256 codes, which the
# SeiT format stores (codes 0..509), trained briefly.
_base_ = ['../../../../configs/vqvae/vqvae_vq-512_conv-f4_1xb8-2k_shapes-64.py']
model = dict(quantizer=dict(codebook_size=256))
train_cfg = dict(max_iters=300, val_interval=300)
default_hooks = dict(checkpoint=dict(interval=300))
