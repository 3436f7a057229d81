# MARVEL-L-32*4 stage 2 (README: rFID 1.06; 32 x 4 token ids per image).
_base_ = ['./marvel_rlfq-4k-x1_l32-stage2_8xb32-500k_in1k-256.py']
depth = 4
stage1_checkpoint = \
    'work_dirs/marvel_rlfq-4k-x4_l32_8xb64-40k_in1k-256/iter_40000.pth'
model = dict(quantizer=dict(depth=depth),
             pretrained=dict(stage1=dict(checkpoint=stage1_checkpoint)))
