# The CPU demo with LPIPS (weight 1.0) added to L1, as in taming. Needs
# torchvision's VGG16 weights at `lpips_trunk_path` (save
# torchvision.models.vgg16(weights='IMAGENET1K_V1').state_dict() there on a
# machine with internet, or pass --cfg-options
# model.perceptual_loss.trunk_path=PATH); training stops before iteration 0
# with the path and this key if the file is missing.
_base_ = ['./vqgan_vq-512_conv-f4_1xb8-2k_skimage-64.py']
lpips_trunk_path = 'checkpoints/vgg16-397923af.pth'
model = dict(perceptual_loss=dict(type='LPIPS', trunk_path=lpips_trunk_path,
                                  loss_weight=1.0))
