# TiTok-B-128 at 512 x 512, stage 1 (paper Table 2: rFID 1.52, gFID 2.13
# after stage 2; "202M" tokenizer); 175,400,716 parameters without the
# teacher (meta device). The TiTok-B-64 config
# (./titok_vq-4k_b64_8xb32-1m_in1k-256.py) at 512 with 128 tokens, built as
# TiTok-L-64 at 512 is (see there what is inferred).
_base_ = ['./titok_vq-4k_l64_8xb32-1m_in1k-512.py']
size, num_latent_tokens = 'B', 128
model = dict(encoder=dict(size=size, num_latent_tokens=num_latent_tokens),
             decoder=dict(size=size, num_latent_tokens=num_latent_tokens))
