# Ablation row 8 (README "+ equilibrium enhancement": rFID 0.80, gFID 2.60,
# linear probe 58.0) = the paper config, MSVR10P2-4096. Rows 7..1 each inherit
# the next row and change only what the README's row adds (rows 7-8 are
# inferred from the README's names: 7 = the DINO feature discriminator with
# DiffAugment, 8 = + LeCam 0.001; labelled so in the README).
_base_ = ['../imagefolder_msvr10p2-4k_dinov2-b_8xb128-200e_in1k-256.py']
