# Ablation row 6 ("+ semantic regularization on one branch": rFID 1.57, gFID
# 3.53, linear probe 40.5): row 7 with a PatchGAN discriminator (hinge, no
# LeCam) instead of the DINO feature discriminator.
_base_ = ['./imagefolder_row7-dinodisc_dinov2-b_8xb128-200e_in1k-256.py']
model = dict(discriminator=dict(_delete_=True, type='PatchGANDiscriminator',
                                in_channels=3, base_channels=64,
                                num_layers=3, norm='batch'))
