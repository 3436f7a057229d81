"""Differentiable augmentation (DiffAugment; Zhao et al. 2020,
"Differentiable Augmentation for Data-Efficient GAN Training", §3 and its
reference code), as used before the frozen-feature discriminator of
StyleGAN-T / ImageFolder.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

POLICIES = ('color', 'translation', 'cutout')


def uniform(num: int, low: float, high: float, device: torch.device,
            generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``num`` fp32 draws of ``U(low, high)`` on ``device``, drawn from
    ``generator`` (on the generator's device) when given."""
    draw = torch.rand(num, generator=generator,
                      device=device if generator is None else generator.device)
    return (low + (high - low) * draw).to(device)


def randint(num: int, low: int, high: int, device: torch.device,
            generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``num`` integers in ``[low, high)`` on ``device``, drawn from
    ``generator`` (on the generator's device) when given."""
    draw = torch.randint(
        low, high, (num, ), generator=generator,
        device=device if generator is None else generator.device)
    return draw.to(device)


def coin(prob: float, generator: Optional[torch.Generator] = None) -> bool:
    """``True`` with probability ``prob`` (drawn on the CPU unless
    ``generator`` lives elsewhere: no device synchronisation)."""
    return uniform(1, 0, 1, torch.device('cpu'), generator).item() < prob


class DiffAugment(nn.Module):
    """DiffAugment: random colour, translation and cutout, differentiable
    w.r.t. the images, applied to real *and* generated images in both the
    discriminator and the generator step (Zhao et al. 2020, Fig. 4).

    Layout: images ``(B, C, H, W)``; any value range (the ranges below are
    for ``[-1, 1]`` images, as in the reference code).

    Every call draws its own parameters, one set per sample: a real batch
    and a fake batch passed in two calls get independent transforms (as in
    DiffAugment and ImageFolder's ``DiffAug``). Pass a ``torch.Generator``
    to :meth:`forward` for reproducible draws.

    Policies, applied in the order listed in ``policy``:

    * ``'color'``: brightness ``x + U(brightness_range)``, then saturation
      ``(x - mean_c x) · U(saturation_range) + mean_c x`` (mean over
      channels), then contrast ``(x - mean x) · U(contrast_range) + mean x``
      (mean over channels and pixels);
    * ``'translation'``: integer shift by ``U{-s, …, s}`` pixels per axis,
      ``s = ⌊ratio · size + 1/2⌋``, zero fill;
    * ``'cutout'``: a ``⌊ratio · H + 1/2⌋ × ⌊ratio · W + 1/2⌋`` rectangle,
      centred uniformly so that it may be clipped by the border, is zeroed.

    Args:
        policy: comma-separated subset of ``'color,translation,cutout'``
            (``''``: identity).
        translation_ratio: maximum shift as a fraction of the size (1/8).
        cutout_ratio: cutout side as a fraction of the size (1/2 in
            DiffAugment, 0.2 in ImageFolder's discriminator).
        prob: each policy is applied to the whole batch with this
            probability (ImageFolder's ``DiffAug``; 1 in DiffAugment).
        brightness_range, saturation_range, contrast_range: uniform ranges
            of the colour transforms.
    """

    def __init__(self,
                 policy: str = 'color,translation,cutout',
                 translation_ratio: float = 0.125,
                 cutout_ratio: float = 0.5,
                 prob: float = 1.0,
                 brightness_range: Sequence[float] = (-0.5, 0.5),
                 saturation_range: Sequence[float] = (0.0, 2.0),
                 contrast_range: Sequence[float] = (0.5, 1.5)):
        super().__init__()
        self.policies: Tuple[str, ...] = tuple(
            p.strip() for p in policy.split(',') if p.strip())
        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown:
            raise ValueError(f'policy {policy!r} has unknown entries '
                             f'{unknown}; choose from {POLICIES}')
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f'prob must be in [0, 1], got {prob}')
        self.translation_ratio = translation_ratio
        self.cutout_ratio = cutout_ratio
        self.prob = prob
        self.brightness_range = tuple(brightness_range)
        self.saturation_range = tuple(saturation_range)
        self.contrast_range = tuple(contrast_range)

    def forward(self, images: torch.Tensor,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Augment ``(B, C, H, W)`` images (a new tensor; graph kept)."""
        if images.dim() != 4:
            raise ValueError(f'DiffAugment expects (B, C, H, W) images, got '
                             f'shape {tuple(images.shape)}')
        x = images
        for name in self.policies:
            if self.prob < 1.0 and not coin(self.prob, generator):
                continue
            x = getattr(self, f'_{name}')(x, generator)
        return x

    def _factor(self, x, value_range, generator):
        low, high = value_range
        factor = uniform(x.shape[0], low, high, x.device, generator)
        return factor.to(x.dtype).view(-1, 1, 1, 1)

    def _color(self, x, generator):
        x = x + self._factor(x, self.brightness_range, generator)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * self._factor(
            x, self.saturation_range, generator) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * self._factor(
            x, self.contrast_range, generator) + mean

    def _translation(self, x, generator):
        B, C, H, W = x.shape
        shift_h = int(H * self.translation_ratio + 0.5)
        shift_w = int(W * self.translation_ratio + 0.5)
        dh = randint(B, -shift_h, shift_h + 1, x.device, generator)
        dw = randint(B, -shift_w, shift_w + 1, x.device, generator)
        # source index in the 1-pixel zero-padded image; out of range -> pad
        rows = (torch.arange(H, device=x.device)
                + dh[:, None] + 1).clamp(0, H + 1)
        cols = (torch.arange(W, device=x.device)
                + dw[:, None] + 1).clamp(0, W + 1)
        x = F.pad(x, [1, 1, 1, 1])
        x = x.gather(2, rows[:, None, :, None].expand(B, C, H, W + 2))
        return x.gather(3, cols[:, None, None, :].expand(B, C, H, W))

    def _cutout(self, x, generator):
        B, _, H, W = x.shape
        size_h = int(H * self.cutout_ratio + 0.5)
        size_w = int(W * self.cutout_ratio + 0.5)
        top = (randint(B, 0, H + 1 - size_h % 2, x.device, generator)
               - size_h // 2)
        left = (randint(B, 0, W + 1 - size_w % 2, x.device, generator)
                - size_w // 2)
        rows = torch.arange(H, device=x.device) - top[:, None]
        cols = torch.arange(W, device=x.device) - left[:, None]
        inside = (((rows >= 0) & (rows < size_h))[:, :, None]
                  & ((cols >= 0) & (cols < size_w))[:, None, :])
        return x * (~inside).to(x.dtype)[:, None]
