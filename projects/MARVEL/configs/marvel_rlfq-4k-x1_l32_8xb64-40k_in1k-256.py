# MARVEL-L-32 stage 1: TiTok-L-32 with MARVEL's residual lookup-free
# quantizer (`marvel_quantizer` in _base_/marvel_quantizer.py, depth 1) instead of the
# 4096 x 12 VQ; 32 x depth token ids per image, trained against the
# MaskGIT-VQGAN proxy codes as TiTok's stage 1.
# Starts from TiTok-L-32 stage-1 weights (`titok_checkpoint`): encoder,
# decoder and proxy head kept, the VQ codebook dropped by name; anything else
# that does not fit is an error. MARVEL trained with 8 x 64 images on
# TiTok's schedule (1M-iteration cosine) and took the step-40,000 checkpoint
# to stage 2.
_base_ = [
    '../../../configs/titok/titok_vq-4k_l32_8xb32-1m_in1k-256.py',
    './_base_/marvel_quantizer.py'
]
depth = 1
titok_checkpoint = \
    'work_dirs/titok_vq-4k_l32_8xb32-1m_in1k-256/iter_1000000.pth'
model = dict(
    quantizer={{_base_.marvel_quantizer}},
    pretrained=dict(titok=dict(checkpoint=titok_checkpoint,
                               allow_missing=[r'ema\..*'],
                               allow_unexpected=[r'(ema\.)?quantizer\..*'])))
batch_per_gpu = 64
train_dataloader = dict(batch_size=batch_per_gpu)
train_cfg = dict(max_iters=40000)
