# TiTok-L-96 stage 1 on the grid recipe (paper Appendix Table 4(a):
# rFID 3.4); 610,473,996 parameters without the teacher (meta device).
_base_ = ['./titok_vq-1k_l32_8xb32-500k_in1k-256.py']
size, num_latent_tokens = 'L', 96
model = dict(encoder=dict(size=size, num_latent_tokens=num_latent_tokens),
             decoder=dict(size=size, num_latent_tokens=num_latent_tokens))
