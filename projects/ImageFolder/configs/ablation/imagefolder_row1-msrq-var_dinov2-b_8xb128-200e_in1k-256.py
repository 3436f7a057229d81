# Ablation row 1 ("multi-scale residual quantization (VAR)": rFID 1.92, gFID
# 7.52; 680 tokens): row 2 without quantizer dropout.
_base_ = ['./imagefolder_row2-qdrop_dinov2-b_8xb128-200e_in1k-256.py']
model = dict(quantizer=dict(quantizer=dict(dropout_ratio=0.0, start_scale=1)))
