from .adversarial import (
    GAN_LOSS_TYPES,
    AdversarialLoss,
    adaptive_gan_weight,
    discriminator_gan_loss,
    generator_gan_loss,
    r1_penalty,
)
from .class_balanced_mse import ClassBalancedMSELoss
from .perceptual import LPIPS, PerceptualFeatureLoss
from .reconstruction import CharbonnierLoss, L1Loss, MSELoss, PixelLoss
from .semantic import SemanticRegularizationLoss

__all__ = [
    'PixelLoss', 'L1Loss', 'MSELoss', 'CharbonnierLoss', 'AdversarialLoss',
    'GAN_LOSS_TYPES', 'adaptive_gan_weight', 'discriminator_gan_loss',
    'generator_gan_loss', 'r1_penalty', 'LPIPS', 'PerceptualFeatureLoss',
    'ClassBalancedMSELoss', 'SemanticRegularizationLoss'
]
