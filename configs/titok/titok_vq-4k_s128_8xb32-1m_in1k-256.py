# TiTok-S-128 stage 1 (README: rFID 1.71 after stage 2); 52,934,156
# parameters without the teacher.
_base_ = ['./titok_vq-4k_l32_8xb32-1m_in1k-256.py']
size, num_latent_tokens = 'S', 128
model = dict(encoder=dict(size=size, num_latent_tokens=num_latent_tokens),
             decoder=dict(size=size, num_latent_tokens=num_latent_tokens))
