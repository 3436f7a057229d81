"""Adversarial training terms of the VQGAN family (Esser et al. 2021, §3.2).

:class:`AdversarialLoss` is the whole recipe in one config entry: the GAN
objective (hinge, non-saturating, vanilla), the generator's GAN weight — the
taming adaptive weight (eq. 7, the ratio of gradient norms at the decoder's
last layer) or a fixed one — the discriminator start iteration, LeCam
regularisation (Tseng et al. 2021) and the R1 penalty (Mescheder et al.
2018). Logits are any-shaped tensors whose first axis is the batch.

The discriminator sees images in the loss's declared ``pixel_range``
(TiTok's ``NLayerDiscriminator`` sees ``[0, 1]`` images: bytedance/1d-
tokenizer ``modeling/modules/losses.py`` ``ReconstructionLoss_Stage2``), mapped
from the tokenizer's ``[-1, 1]`` once, by :meth:`AdversarialLoss.logits`.
"""
import math
from typing import Callable, Dict, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.models.losses.reconstruction import (
    TOKENIZER_PIXEL_RANGE,
    check_pixel_range,
    to_pixel_range,
)
from vistok.registry import LOSSES
from vistok.utils.dist import all_reduce_sum_, is_distributed

GAN_LOSS_TYPES = ('hinge', 'non_saturating', 'vanilla')


def discriminator_gan_loss(loss_type: str, logits_real: torch.Tensor,
                           logits_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss, averaged over real and fake (taming's
    ``0.5 · (L_real + L_fake)``).

    * hinge (Lim & Ye 2017): ``relu(1 - D(x)) + relu(1 + D(x̂))``;
    * non_saturating / vanilla (Goodfellow et al. 2014, eq. 1; the two
      differ only for the generator): ``softplus(-D(x)) + softplus(D(x̂))``
      (``-log σ(D(x)) - log(1 - σ(D(x̂)))``).
    """
    _check_type(loss_type)
    if loss_type == 'hinge':
        real = F.relu(1.0 - logits_real).mean()
        fake = F.relu(1.0 + logits_fake).mean()
    else:
        real = F.softplus(-logits_real).mean()
        fake = F.softplus(logits_fake).mean()
    return 0.5 * (real + fake)


def generator_gan_loss(loss_type: str,
                       logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's loss on the logits of its samples ``x̂``.

    * hinge (taming, MaskGIT): ``-D(x̂)``;
    * non_saturating (Goodfellow et al. 2014 §3): ``softplus(-D(x̂))``
      (``-log σ(D(x̂))``);
    * vanilla (the minimax objective): ``-softplus(D(x̂))``
      (``log(1 - σ(D(x̂)))``).
    """
    _check_type(loss_type)
    if loss_type == 'hinge':
        return -logits_fake.mean()
    if loss_type == 'non_saturating':
        return F.softplus(-logits_fake).mean()
    return -F.softplus(logits_fake).mean()


def _check_type(loss_type: str) -> None:
    if loss_type not in GAN_LOSS_TYPES:
        raise ValueError(f'loss_type must be one of {GAN_LOSS_TYPES}, got '
                         f'{loss_type!r}')


def adaptive_gan_weight(nll_loss: torch.Tensor, gan_loss: torch.Tensor,
                        last_layer: torch.Tensor, max_weight: float = 1e4,
                        eps: float = 1e-4) -> torch.Tensor:
    """Taming's adaptive weight (Esser et al. 2021, eq. 7):
    ``λ = ‖∇_L nll‖ / (‖∇_L gan‖ + eps)``, clamped to ``[0, max_weight]`` and
    detached, where ``L`` is the decoder's last layer and ``nll`` the
    reconstruction + perceptual loss. Both graphs are kept."""
    nll_grad, = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)
    gan_grad, = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)
    weight = nll_grad.float().norm() / (gan_grad.float().norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


def r1_penalty(discriminator: Callable[[torch.Tensor], torch.Tensor],
               real: torch.Tensor):
    """R1 (Mescheder et al. 2018, eq. 9 without ``γ/2``):
    ``E ‖∇_x D(x)‖²`` on real images ``x`` ``(B, C, H, W)``. Returns
    ``(penalty, logits_real)`` so the logits can serve the GAN loss too."""
    real = real.detach().requires_grad_(True)
    logits = discriminator(real)
    grad, = torch.autograd.grad(logits.float().sum(), real, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean(), logits


@LOSSES.register_module()
class AdversarialLoss(nn.Module):
    """Generator and discriminator terms of a VQGAN-style tokenizer.

    Generator: ``λ · generator_weight · s · L_G(D(x̂))`` where ``λ`` is
    :func:`adaptive_gan_weight` (``adaptive_weight=True``, taming) or 1 (a
    fixed GAN weight, as MaskGIT / TiTok / Open-MAGVIT2) and ``s`` is
    :attr:`generator_scale` (1 unless set from outside with
    :meth:`set_generator_scale`; UniCode fades the term with its codebook
    mixing weight, ``s = 1 - 0.9·λ_mix``). ``s`` multiplies after the
    adaptive weight is computed on the unscaled ``L_G`` — as in UniCode's
    ``VQLPIPSWithDiscriminator`` (``src/vae/models/stage1/
    discriminator.py``: ``g_loss = g_loss * (1 - 0.9 * llm_ratio)`` after
    ``calculate_adaptive_weight``) — so the term scales by exactly ``s``
    (scaling ``L_G`` before would be cancelled by the weight's ratio of
    gradient norms). Discriminator:
    ``discriminator_weight · L_D + lecam_weight · R_LC + r1_weight / 2 · R1``.
    Both are zero — and the algorithm skips the discriminator entirely —
    before ``start_iter`` (taming's ``disc_start``).

    LeCam (Tseng et al. 2021, eq. 3, in the rectified form of MaskGIT /
    TiTok): ``relu(mean D(x) - α_F)² + relu(α_R - mean D(x̂))²`` with
    ``α_R, α_F`` exponential moving averages (``lecam_decay``) of the mean
    real / fake logits, kept as buffers (checkpointed) and averaged over
    ranks.

    Args:
        loss_type: one of :data:`GAN_LOSS_TYPES`.
        generator_weight: taming's ``disc_weight`` (multiplies ``λ``).
        adaptive_weight: use the adaptive ``λ``; else ``λ = 1``.
        adaptive_weight_max: upper clamp of ``λ`` (taming: 1e4).
        adaptive_weight_eps: ``eps`` of ``λ``'s denominator (taming: 1e-4).
        discriminator_weight: multiplies ``L_D`` (taming's ``disc_factor``).
        start_iter: first iteration with adversarial training.
        lecam_weight: weight of ``R_LC`` (0 disables it; TiTok 0.001).
        lecam_decay: EMA decay of ``α_R, α_F`` (TiTok 0.999).
        r1_weight: ``γ`` of the R1 penalty (0 disables it; the gradient is
            taken with respect to the discriminator's input, in
            ``pixel_range``).
        pixel_range: ``(low, high)`` range of the images the discriminator
            sees (real images and reconstructions, unclamped, mapped from
            ``[-1, 1]``): TiTok / MaskGIT-VQGAN ``(0, 1)``, taming ``(-1,
            1)`` (the default).
    """

    def __init__(self,
                 loss_type: str = 'hinge',
                 generator_weight: float = 0.1,
                 adaptive_weight: bool = True,
                 adaptive_weight_max: float = 1e4,
                 adaptive_weight_eps: float = 1e-4,
                 discriminator_weight: float = 1.0,
                 start_iter: int = 0,
                 lecam_weight: float = 0.0,
                 lecam_decay: float = 0.999,
                 r1_weight: float = 0.0,
                 pixel_range: Sequence[float] = TOKENIZER_PIXEL_RANGE):
        super().__init__()
        _check_type(loss_type)
        for name, value in (('generator_weight', generator_weight),
                            ('discriminator_weight', discriminator_weight),
                            ('lecam_weight', lecam_weight),
                            ('r1_weight', r1_weight),
                            ('start_iter', start_iter)):
            if value < 0:
                raise ValueError(f'{name} must be >= 0, got {value}')
        if not 0.0 <= lecam_decay < 1.0:
            raise ValueError(f'lecam_decay must be in [0, 1), got '
                             f'{lecam_decay}')
        self.loss_type = loss_type
        self.generator_weight = generator_weight
        self.adaptive_weight = adaptive_weight
        self.adaptive_weight_max = adaptive_weight_max
        self.adaptive_weight_eps = adaptive_weight_eps
        self.discriminator_weight = discriminator_weight
        self.start_iter = start_iter
        self.lecam_weight = lecam_weight
        self.lecam_decay = lecam_decay
        self.r1_weight = r1_weight
        self.pixel_range = check_pixel_range(pixel_range)
        #: multiplies the generator's GAN term (see the class docstring);
        #: not checkpointed: whoever sets it (a schedule hook) sets it
        #: again before every iteration
        self.generator_scale = 1.0
        self.register_buffer('lecam_ema_real', torch.zeros(()))
        self.register_buffer('lecam_ema_fake', torch.zeros(()))

    def set_generator_scale(self, scale: float) -> None:
        """Set :attr:`generator_scale` ``s >= 0`` (1: the plain term)."""
        scale = float(scale)
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f'generator scale must be a finite number >= 0, '
                             f'got {scale!r}')
        self.generator_scale = scale

    def discriminator_input(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` ``(B, C, H, W)`` in ``[-1, 1]`` → :attr:`pixel_range`,
        the discriminator's input."""
        return to_pixel_range(images, self.pixel_range)

    def logits(self, discriminator: nn.Module,
               images: torch.Tensor) -> torch.Tensor:
        """The discriminator's logits of ``images`` in ``[-1, 1]`` (the
        generator step calls this on its reconstructions)."""
        return discriminator(self.discriminator_input(images))

    def is_active(self, iteration: int) -> bool:
        """Whether adversarial training runs at ``iteration``."""
        return iteration >= self.start_iter

    def generator_losses(self, logits_fake: torch.Tensor,
                         nll_loss: torch.Tensor,
                         last_layer: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``loss_gan`` (weighted) and the ``gan_weight`` ``λ ·
        generator_weight · generator_scale`` for logging. ``nll_loss`` and
        ``last_layer`` are used by the adaptive weight only."""
        gan = generator_gan_loss(self.loss_type, logits_fake.float())
        if self.adaptive_weight and torch.is_grad_enabled():
            weight = adaptive_gan_weight(nll_loss, gan, last_layer,
                                         self.adaptive_weight_max,
                                         self.adaptive_weight_eps)
        else:
            weight = gan.new_tensor(1.0)
        weight = weight * (self.generator_weight * self.generator_scale)
        return dict(loss_gan=weight * gan, gan_weight=weight)

    def discriminator_losses(self, discriminator: nn.Module,
                             real: torch.Tensor,
                             fake: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Discriminator terms on real images and (detached) reconstructions
        ``(B, C, H, W)`` in ``[-1, 1]`` (the discriminator sees them in
        :attr:`pixel_range`): ``loss_disc`` and, when enabled,
        ``loss_lecam`` and ``loss_r1``; ``logits_real`` / ``logits_fake``
        means for logging."""
        real = self.discriminator_input(real.detach())
        if self.r1_weight > 0:
            r1, logits_real = r1_penalty(discriminator, real)
        else:
            logits_real = discriminator(real)
        logits_fake = self.logits(discriminator, fake.detach())
        logits_real, logits_fake = logits_real.float(), logits_fake.float()
        losses = dict(loss_disc=self.discriminator_weight *
                      discriminator_gan_loss(self.loss_type, logits_real,
                                             logits_fake))
        mean_real, mean_fake = logits_real.mean(), logits_fake.mean()
        if self.lecam_weight > 0:
            losses['loss_lecam'] = self.lecam_weight * (
                F.relu(mean_real - self.lecam_ema_fake).pow(2) +
                F.relu(self.lecam_ema_real - mean_fake).pow(2))
            self._update_lecam_ema(mean_real.detach(), mean_fake.detach())
        if self.r1_weight > 0:
            losses['loss_r1'] = 0.5 * self.r1_weight * r1
        losses.update(logits_real=mean_real.detach(),
                      logits_fake=mean_fake.detach())
        return losses

    @torch.no_grad()
    def _update_lecam_ema(self, mean_real: torch.Tensor,
                          mean_fake: torch.Tensor) -> None:
        means = torch.stack([mean_real, mean_fake])
        if is_distributed():
            means = all_reduce_sum_(means) / torch.distributed.get_world_size()
        for ema, value in zip((self.lecam_ema_real, self.lecam_ema_fake),
                              means):
            ema.mul_(self.lecam_decay).add_((1 - self.lecam_decay) * value)
