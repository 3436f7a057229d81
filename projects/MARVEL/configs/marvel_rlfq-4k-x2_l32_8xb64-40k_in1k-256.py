# MARVEL-L-32*2 stage 1: 2 residual LFQ depths, 32 x 2 token ids per image.
_base_ = ['./marvel_rlfq-4k-x1_l32_8xb64-40k_in1k-256.py']
depth = 2
model = dict(quantizer=dict(depth=depth))
