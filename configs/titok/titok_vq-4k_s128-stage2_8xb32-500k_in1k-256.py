# TiTok-S-128 stage 2 (README: rFID 1.71); 83,674,639 parameters. Starts from
# the TiTok-S-128 stage-1 checkpoint.
_base_ = ['./titok_vq-4k_l32-stage2_8xb32-500k_in1k-256.py']
size, num_latent_tokens = 'S', 128
stage1_checkpoint = \
    'work_dirs/titok_vq-4k_s128_8xb32-1m_in1k-256/iter_1000000.pth'
model = dict(encoder=dict(size=size, num_latent_tokens=num_latent_tokens),
             decoder=dict(size=size, num_latent_tokens=num_latent_tokens),
             pretrained=dict(stage1=dict(checkpoint=stage1_checkpoint)))
