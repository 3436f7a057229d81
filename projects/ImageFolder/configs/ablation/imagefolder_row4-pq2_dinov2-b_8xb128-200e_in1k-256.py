# Ablation row 4 ("+ product quantization & parallel decoding": rFID 2.06,
# gFID 5.96): row 5 without semantic regularisation.
_base_ = ['./imagefolder_row5-sem-all_dinov2-b_8xb128-200e_in1k-256.py']
model = dict(semantic_loss=dict(target='none'))
