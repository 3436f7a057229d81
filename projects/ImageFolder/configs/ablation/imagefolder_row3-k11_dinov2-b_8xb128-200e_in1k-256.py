# Ablation row 3 ("+ smaller patch size K = 11": rFID 3.24, gFID 6.56): row 4
# with one branch (no product quantization).
_base_ = ['./imagefolder_row4-pq2_dinov2-b_8xb128-200e_in1k-256.py']
model = dict(encoder=dict(num_branches=1), decoder=dict(num_branches=1),
             quantizer=dict(num_branches=1),
             semantic_loss=dict(num_branches=1))
