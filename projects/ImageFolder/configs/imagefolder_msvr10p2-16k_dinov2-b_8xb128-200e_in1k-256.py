# ImageFolder MSVR10P2-16384 (README: rFID 0.67).
_base_ = ['./imagefolder_msvr10p2-4k_dinov2-b_8xb128-200e_in1k-256.py']
model = dict(quantizer=dict(quantizer=dict(quantizer=dict(
    codebook_size=16384))))
