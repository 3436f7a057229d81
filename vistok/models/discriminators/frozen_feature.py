"""Discriminator on the token features of a frozen pretrained ViT
(StyleGAN-T, Sauer et al. 2023, §3.2 "Discriminator"; Projected GAN, Sauer
et al. 2021), in the configuration of ImageFolder's ``DinoDisc`` (Li et al.
2025): DINO ViT-S/16 at 224 px, DiffAugment before the trunk, one trainable
head per tapped block.
"""
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.models.utils.frozen import freeze_as_buffers, load_frozen_weights
from vistok.registry import DISCRIMINATORS
from vistok.utils.weights import load_state_dict_file
from .diffaug import DiffAugment, coin, randint
from .patchgan import build_conv, build_norm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ScaledResidual(nn.Module):
    """``(fn(x) + x) · scale`` (StyleGAN-T's ``ResidualBlock``, scale
    ``1/√2`` keeps the variance of two unit-variance summands)."""

    def __init__(self, fn: nn.Module, scale: float = 1 / math.sqrt(2)):
        super().__init__()
        self.fn, self.scale = fn, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.fn(x) + x) * self.scale


def token_head(channels: int, kernel_size: int = 9, norm: str = 'local_batch',
               spectral_norm: bool = True, norm_eps: float = 1e-6,
               num_groups: int = 32, virtual_batch_size: int = 8,
               negative_slope: float = 0.2) -> nn.Sequential:
    """StyleGAN-T's unconditional ``DiscHead`` on ``(B, C, N)`` tokens →
    ``(B, 1, N)`` logits: ``block(1) → ScaledResidual(block(kernel_size)) →
    conv1d(1×1, C → 1)``, where ``block(k)`` is a circular-padded conv1d
    over the token axis → norm → LeakyReLU."""

    def block(k):
        return nn.Sequential(
            build_conv(1, channels, channels, k, padding=k // 2,
                       spectral_norm=spectral_norm, padding_mode='circular'),
            build_norm(norm, channels, spatial_dims=1, num_groups=num_groups,
                       eps=norm_eps, virtual_batch_size=virtual_batch_size),
            nn.LeakyReLU(negative_slope))

    return nn.Sequential(
        block(1), ScaledResidual(block(kernel_size)),
        build_conv(1, channels, 1, 1, spectral_norm=spectral_norm))


@DISCRIMINATORS.register_module()
class FrozenFeatureDiscriminator(nn.Module):
    """Frozen ViT features + trainable token heads (StyleGAN-T §3.2,
    ImageFolder's ``DinoDisc``).

    Layout: images ``(B, 3, H, W)`` in ``[-1, 1]`` → logits ``(B, N_total)``,
    the per-token logits of every head concatenated (``N_total = F · N``
    for ``F`` tapped features of ``N`` patch tokens; 5 · 196 by default).

    Forward, as ``DinoDisc``:

    1. (fp32) DiffAugment on the input resolution (own draws per call:
       real and fake batches get independent transforms); then, for a
       larger input, with probability ``random_crop_prob`` one random
       ``input_size²`` crop of the batch, else a resize to ``input_size²``
       (``'area'`` when shrinking, bicubic when enlarging); ImageNet
       normalisation.
    2. The frozen timm ViT (``timm.create_model(model_name,
       pretrained=False, img_size=input_size, num_classes=0,
       **model_kwargs)``; blocks after the last tapped one are pruned);
       features are read after the embedding (``embedding_features``) and
       after each block of ``feature_blocks`` (0-based), as patch tokens plus
       the class token (StyleGAN-T's "readout").
    3. One :func:`token_head` per feature, ``(B, C, N) → (B, N)``.

    The trunk is frozen with :func:`freeze_as_buffers`: only the heads are
    parameters (and in the state dict); gradients flow through the trunk to
    the images, as the generator's adversarial loss and R1 need. Heads keep
    PyTorch's default initialisation from construction (as StyleGAN-T);
    :meth:`init_weights` loads the trunk from ``weights_path``.

    Args:
        model_name: timm architecture of the trunk.
        weights_path: local file with the trunk's timm state dict (loaded in
            :meth:`init_weights`).
        input_size: side of the trunk's input (224).
        feature_blocks: tapped blocks ((2, 5, 8, 11) for ViT-S: the ends of
            its four stages).
        embedding_features: also tap the tokens entering block 0.
        mean, std: per-channel normalisation of ``[0, 1]`` images.
        random_crop_prob: probability of a random crop instead of a resize
            for inputs larger than ``input_size`` (0.5 in ``DinoDisc``).
        policy: DiffAugment policy (``''``: no augmentation); ImageFolder
            applies translation, colour, cutout in that order.
        cutout_ratio: DiffAugment cutout side (0.2 in ImageFolder).
        augment_kwargs: further :class:`DiffAugment` arguments.
        head_kernel_size: taps of the residual conv of each head (9).
        head_norm: norm of the heads (see :func:`build_norm`;
            ``'local_batch'`` as StyleGAN-T, ``'group'``, ``'batch'``).
        head_spectral_norm: spectral norm on the head convs.
        head_norm_eps, head_num_groups, virtual_batch_size: norm settings.
        negative_slope: of the heads' LeakyReLUs.
        fused_attention: let the trunk's timm attention use
            ``F.scaled_dot_product_attention``. Its fused kernels have no
            second derivative: set ``False`` (explicit softmax attention)
            when a gradient penalty such as R1 differentiates through the
            discriminator twice.
        model_kwargs: extra ``timm.create_model`` arguments (e.g. ``depth``).
    """

    WEIGHTS_HOW_TO_GET = (
        'On a machine with internet: `import timm, torch; torch.save(timm.'
        "create_model('{name}', pretrained=True).state_dict(), "
        "'{name}.pth')`, copy the file here and set `weights_path` to it.")

    def __init__(self,
                 model_name: str = 'vit_small_patch16_224.dino',
                 weights_path: Optional[str] = None,
                 input_size: int = 224,
                 feature_blocks: Sequence[int] = (2, 5, 8, 11),
                 embedding_features: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD,
                 random_crop_prob: float = 0.5,
                 policy: str = 'translation,color,cutout',
                 cutout_ratio: float = 0.2,
                 augment_kwargs: Optional[Dict] = None,
                 head_kernel_size: int = 9,
                 head_norm: str = 'local_batch',
                 head_spectral_norm: bool = True,
                 head_norm_eps: float = 1e-6,
                 head_num_groups: int = 32,
                 virtual_batch_size: int = 8,
                 negative_slope: float = 0.2,
                 fused_attention: bool = True,
                 model_kwargs: Optional[Dict] = None):
        super().__init__()
        import timm  # imported here: importing vistok stays cheap

        self.model_name, self.weights_path = model_name, weights_path
        self.input_size, self.random_crop_prob = input_size, random_crop_prob
        self.embedding_features = embedding_features
        self.augment = DiffAugment(policy, cutout_ratio=cutout_ratio,
                                   **(augment_kwargs or {}))
        trunk = timm.create_model(
            model_name, pretrained=False, img_size=input_size,
            **{'num_classes': 0, **(model_kwargs or {})})
        depth = len(trunk.blocks)
        self.feature_blocks = tuple(sorted(set(feature_blocks)))
        if not self.feature_blocks or not all(
                0 <= b < depth for b in self.feature_blocks):
            raise ValueError(f'feature_blocks must be a non-empty set of '
                             f'block indices in [0, {depth}) of {model_name}, '
                             f'got {tuple(feature_blocks)}')
        trunk.prune_intermediate_layers(list(self.feature_blocks),
                                        prune_norm=True, prune_head=True)
        for sub in trunk.modules():
            if hasattr(sub, 'fused_attn'):  # timm's switch to F.sdpa
                sub.fused_attn = fused_attention
        self.trunk = freeze_as_buffers(trunk)
        scale = torch.tensor([0.5 / s for s in std]).view(1, -1, 1, 1)
        shift = torch.tensor([(0.5 - m) / s for m, s in zip(mean, std)])
        self.register_buffer('input_scale', scale, persistent=False)
        self.register_buffer('input_shift', shift.view(1, -1, 1, 1),
                             persistent=False)
        num_features = len(self.feature_blocks) + int(embedding_features)
        self.heads = nn.ModuleList(
            token_head(trunk.embed_dim, head_kernel_size, head_norm,
                       head_spectral_norm, head_norm_eps, head_num_groups,
                       virtual_batch_size, negative_slope)
            for _ in range(num_features))

    def init_weights(self) -> None:
        """Load the frozen trunk from ``weights_path``
        (:class:`~vistok.utils.weights.MissingWeightsError` if missing)."""
        how = self.WEIGHTS_HOW_TO_GET.format(name=self.model_name)
        state = load_state_dict_file(self.weights_path, 'weights_path', how)
        load_frozen_weights(self.trunk, state, self.weights_path)

    def preprocess(
            self, images: torch.Tensor,
            generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Augment, crop / resize and normalise ``(B, 3, H, W)`` images in
        ``[-1, 1]`` to the trunk's input ``(B, 3, S, S)``, in fp32."""
        with torch.autocast(device_type=images.device.type, enabled=False):
            x = self.augment(images.float(), generator)
            S, (H, W) = self.input_size, x.shape[-2:]
            if (H, W) != (S, S):
                if H > S and W > S and coin(self.random_crop_prob, generator):
                    cpu = torch.device('cpu')
                    top = randint(1, 0, H - S + 1, cpu, generator).item()
                    left = randint(1, 0, W - S + 1, cpu, generator).item()
                    x = x[..., top:top + S, left:left + S]
                else:
                    x = F.interpolate(x, size=(S, S),
                                      mode='area' if H > S else 'bicubic')
            return x * self.input_scale + self.input_shift

    def extract_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Trunk features ``(B, C, N)`` of preprocessed images ``x``: the
        patch tokens plus the class token after the embedding (if
        ``embedding_features``) and after each of ``feature_blocks``."""
        trunk = self.trunk
        tokens = trunk.norm_pre(trunk.patch_drop(
            trunk._pos_embed(trunk.patch_embed(x))))
        features = [self._readout(tokens)] if self.embedding_features else []
        for index, block in enumerate(trunk.blocks):
            tokens = block(tokens)
            if index in self.feature_blocks:
                features.append(self._readout(tokens))
        return features

    def _readout(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, self.trunk.num_prefix_tokens:]
        if self.trunk.cls_token is not None:
            patches = patches + tokens[:, :1]
        return patches.transpose(1, 2)

    def forward(self, images: torch.Tensor,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``(B, 3, H, W)`` images in ``[-1, 1]`` → ``(B, N_total)`` logits.
        ``generator`` (optional) drives the augmentation and crop draws."""
        features = self.extract_features(self.preprocess(images, generator))
        return torch.cat([head(f).flatten(1)
                          for head, f in zip(self.heads, features)], dim=1)
