# TiTok's stage-2 pixel losses (bytedance/1d-tokenizer
# ReconstructionLoss_Stage2), used by the TiTok / MARVEL stage-2 configs and
# the MaskGIT-VQGAN training recipe: L2 (set in the model) + 0.1 x MSE of
# ConvNeXt-S ImageNet logits at 224 px + the MaskGIT discriminator (blur-pool
# + GroupNorm), hinge loss, fixed generator weight 0.01 from iteration
# 20,000, LeCam 0.001 with EMA decay 0.999 of the logit means.
# timm.create_model('convnext_small.fb_in1k', pretrained=True).state_dict()
# saved with torch.save on a machine with internet access
perceptual_weights_path = 'checkpoints/convnext_small.fb_in1k.pth'
titok_perceptual_loss = dict(type='PerceptualFeatureLoss',
                             model_name='convnext_small.fb_in1k',
                             weights_path=perceptual_weights_path,
                             mode='logits', resize=224, loss_weight=0.1)
titok_discriminator = dict(type='MaskGITDiscriminator', in_channels=3)
titok_adversarial_loss = dict(type='AdversarialLoss', loss_type='hinge',
                              generator_weight=0.01, adaptive_weight=False,
                              discriminator_weight=1.0, start_iter=20000,
                              lecam_weight=0.001, lecam_decay=0.999)
