# Ablation row 7 ("+ stronger discriminator": rFID 1.04, gFID 2.94, linear
# probe 50.2): row 8 without LeCam (inferred from the README's names).
_base_ = ['./imagefolder_row8-msvr10p2-4k_dinov2-b_8xb128-200e_in1k-256.py']
model = dict(adversarial_loss=dict(lecam_weight=0.0))
