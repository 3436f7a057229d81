# Ablation row 2 ("+ quantizer dropout": rFID 1.71, gFID 6.03; 680 tokens):
# row 3 with VAR's 16 x 16 latent grid and scales 1..16.
_base_ = ['./imagefolder_row3-k11_dinov2-b_8xb128-200e_in1k-256.py']
model = dict(encoder=dict(latent_grid_size=16),
             decoder=dict(latent_grid_size=16),
             quantizer=dict(quantizer=dict(
                 scales=[1, 2, 3, 4, 5, 6, 8, 10, 13, 16])))
