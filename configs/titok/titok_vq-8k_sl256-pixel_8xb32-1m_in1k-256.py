# TiTok-SL-256 VQ, single-stage VQ-8k release (README_TiTok.md rFID 1.03;
# configs/infer/TiTok/titok_sl256_vq8k.yaml): small encoder, large decoder,
# 256 tokens. 330,260,884 parameters (meta device).
_base_ = ['./titok_vq-8k_bl64-pixel_8xb32-1m_in1k-256.py']
num_latent_tokens = 256
model = dict(encoder=dict(size='S', num_latent_tokens=num_latent_tokens),
             decoder=dict(num_latent_tokens=num_latent_tokens))
