# TiTok-B-128 at 512 x 512, stage 2 (paper Table 2: rFID 1.52; "202M"
# tokenizer, a secondary source's figure: 4.1M below this count); 206,141,199
# parameters (meta device, counted as the L-64 one). The TiTok-B-64 stage-2
# config (./titok_vq-4k_b64-stage2_8xb32-500k_in1k-256.py) at 512 with 128
# tokens, built as TiTok-L-64 at 512 is. Starts from the TiTok-B-128 512
# stage-1 checkpoint.
_base_ = ['./titok_vq-4k_l64-stage2_8xb32-500k_in1k-512.py']
size, num_latent_tokens = 'B', 128
stage1_checkpoint = \
    'work_dirs/titok_vq-4k_b128_8xb32-1m_in1k-512/iter_1000000.pth'
model = dict(encoder=dict(size=size, num_latent_tokens=num_latent_tokens),
             decoder=dict(size=size, num_latent_tokens=num_latent_tokens),
             pretrained=dict(stage1=dict(checkpoint=stage1_checkpoint)))
