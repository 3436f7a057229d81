# MARVEL-L-32 stage 1 (architecture): TiTok-L-32 with MARVEL's residual
# lookup-free quantizer — each depth quantizes the residual by sign (12 bits,
# 4,096 implicit codes per depth), output scaled 2^-d, entropy + commitment
# losses — instead of the 4096 x 12 VQ; 32 x depth token ids per image.
# Starts from TiTok-L-32 stage-1 weights (`titok_checkpoint`): encoder,
# decoder and proxy head kept, the VQ codebook dropped by name; anything else
# that does not fit is an error.
_base_ = ['./titok_vq-4k_l32_8xb32-1m_in1k-256.py']
depth = 1
titok_checkpoint = 'work_dirs/titok_vq-4k_l32_8xb32-1m_in1k-256/iter_1000000.pth'
model = dict(quantizer=dict(
    _delete_=True,
    type='ResidualQuantizer',
    depth=depth,
    depth_scales='pow2',
    quantizer=dict(type='LookupFreeQuantizer', codebook_bits=12)),
    pretrained=dict(checkpoint=titok_checkpoint,
                    allow_unexpected=[r'quantizer\..*']))
