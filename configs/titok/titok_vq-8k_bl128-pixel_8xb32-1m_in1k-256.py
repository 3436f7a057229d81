# TiTok-BL-128 VQ, single-stage VQ-8k release (README_TiTok.md rFID 1.49;
# configs/infer/TiTok/titok_bl128_vq8k.yaml): BL-64 VQ with 128 tokens.
# 390,179,988 parameters (meta device).
_base_ = ['./titok_vq-8k_bl64-pixel_8xb32-1m_in1k-256.py']
num_latent_tokens = 128
model = dict(encoder=dict(num_latent_tokens=num_latent_tokens),
             decoder=dict(num_latent_tokens=num_latent_tokens))
