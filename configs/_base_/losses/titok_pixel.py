# TiTok's stage-2 pixel losses (bytedance/1d-tokenizer
# modeling/modules/losses.py ReconstructionLoss_Stage2, weights from
# configs/training/TiTok/stage2/titok_l32.yaml, commit 942a96fb), used by the
# TiTok / MARVEL stage-2 configs and the MaskGIT-VQGAN training recipe:
# L2 (reconstruction_weight 1.0) + 0.1 x MSE of ConvNeXt-S ImageNet logits at
# 224 px + the MaskGIT discriminator (blur-pool + GroupNorm), hinge loss,
# fixed generator weight 0.01 (discriminator_weight 0.01 x
# discriminator_factor 1.0) from iteration 20,000, LeCam 0.001 with EMA decay
# 0.999 of the logit means.
#
# Pixel range: TiTok computes every term on [0, 1] images ("Both inputs and
# reconstructions are in range [0, 1]", ReconstructionLoss_Stage2.forward):
# the L2, the perceptual network's input (resized to 224 px, bilinear,
# antialias, then ImageNet mean / std: modeling/modules/perceptual_loss.py)
# and the discriminator's input (real images and the unclamped
# reconstructions, no normalisation). Each term below declares
# pixel_range=(0, 1) and maps vistok's [-1, 1] images onto it, so
# L2 : perceptual : GAN is TiTok's 1 : 0.1 : 0.01 (on [-1, 1] the L2 would be
# 4x larger).
titok_pixel_range = (0.0, 1.0)
titok_reconstruction_loss = dict(type='MSELoss', loss_weight=1.0,
                                 pixel_range=titok_pixel_range)
# The perceptual network is torchvision's convnext_small(weights=
# IMAGENET1K_V1) (perceptual_loss.py), not timm's convnext_small.fb_in1k
# (other weights). Its file is torchvision's own download,
# https://download.pytorch.org/models/convnext_small-0c510722.pth (URL:
# torchvision.models.ConvNeXt_Small_Weights.IMAGENET1K_V1.url); torchvision
# loads it with check_hash=True, i.e. its sha256 starts with the 8 hex digits
# of its name, which init_weights checks too.
perceptual_weights_path = 'checkpoints/convnext_small-0c510722.pth'
perceptual_weights_sha256 = '0c510722'
titok_perceptual_loss = dict(type='PerceptualFeatureLoss',
                             library='torchvision',
                             model_name='convnext_small',
                             weights_path=perceptual_weights_path,
                             weights_sha256=perceptual_weights_sha256,
                             mode='logits', resize=224,
                             pixel_range=titok_pixel_range, loss_weight=0.1)
titok_discriminator = dict(type='MaskGITDiscriminator', in_channels=3)
titok_adversarial_loss = dict(type='AdversarialLoss', loss_type='hinge',
                              generator_weight=0.01, adaptive_weight=False,
                              discriminator_weight=1.0, start_iter=20000,
                              lecam_weight=0.001, lecam_decay=0.999,
                              pixel_range=titok_pixel_range)
