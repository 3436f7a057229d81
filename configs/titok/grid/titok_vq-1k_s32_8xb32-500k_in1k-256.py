# TiTok-S-32 stage 1 on the grid recipe (paper Appendix Table 4(a):
# rFID 16.2); 52,749,836 parameters without the teacher (meta device).
_base_ = ['./titok_vq-1k_l32_8xb32-500k_in1k-256.py']
size, num_latent_tokens = 'S', 32
model = dict(encoder=dict(size=size, num_latent_tokens=num_latent_tokens),
             decoder=dict(size=size, num_latent_tokens=num_latent_tokens))
