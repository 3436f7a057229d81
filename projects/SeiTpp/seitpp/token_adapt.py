"""TokenAdapt (SeiT++, Lee et al., ECCV 2024, §3.2): a frozen pair of
networks that lets pixel-space augmentations act on stored tokens,
``T_A = q(g(A(f(Z_T))))``.

* ``f`` lifts the token-embedding map ``Z_T`` ``(B, D, h, w)`` to an
  "augmentation-friendly" map ``(B, D, s·h, s·w)``;
* ``A`` is a pixel augmentation (flip, affine, crop) applied there;
* ``g`` maps the result ``(B, D, s·h', s·w')`` to code logits
  ``(B, K, h', w')``; its argmax are the augmented tokens.

Architecture as released (naver-ai/tokenadapt @4e7a3be ``models.py``, with
the ViT of ``layers.py`` from thuanz123/enhancing-transformers): f =
Linear(32 → 384) per token, a 1-block ViT decoder (384-d, 6 heads of 64,
MLP 1536, fixed 2-D sin-cos positions on the 32 × 32 grid) and
ConvTranspose2d(384 → 32, kernel = stride = 2); g = Conv2d(32 → 384,
kernel = stride = 2) on the 56 × 56 map, a 1-block ViT encoder of the same
size and Linear(384 → 391). Here f is vistok's
:class:`~vistok.models.backbones.ViTDecoder` (its 1×1 input embedding is
the per-token linear, its pixel head the transposed conv) and g its
:class:`~vistok.models.backbones.ViTEncoder` with ``out_channels = K`` (its
1×1 output projection is the final linear); ``vit`` carries the layout
options of the official blocks.

Training (:class:`TokenAdaptTrainer`) is **not released**; the paper says
f and g are learned from pairs ``(T_x, T_A(x))`` of a tokenizer's tokens of
an image and of its augmented version, with cross-entropy between
``g(A(f(Z_{T_x})))`` and ``T_A(x)``. What is inferred here (labelled in the
configs): the augmentation family (the one TokenAdapt applies downstream,
:func:`~vistok.models.data_preprocessors.geometric.sample_affine_crop`),
that the pixel A ends in a crop of ``crop_fraction`` (224 of 256 px: a
28 × 28 token grid) and the f-space A uses the same relative box at
``s × 28 = 56``, and the optimiser / schedule.
"""
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModel

from vistok.models.backbones import ViTDecoder, ViTEncoder
from vistok.models.data_preprocessors.geometric import (
    AffineCropParams,
    apply_affine_crop,
    sample_affine_crop,
)
from vistok.models.utils import encode_images, prepare_tokenizer
from vistok.registry import MODELS

#: options of vistok's ViT blocks that give the released TokenAdapt layout
#: (enhancing-transformers' ``layers.py``: no qkv bias, Linear-Tanh-Linear
#: MLP, LayerNorm eps 1e-5, fixed sin-cos positions)
OFFICIAL_VIT = dict(qkv_bias=False, pos_embed='sincos', mlp_act='tanh',
                    norm_eps=1e-5)


@MODELS.register_module()
class TokenAdapt(nn.Module):
    """f and g (see the module docstring).

    Args:
        num_codes: K, the codebook size g predicts (391 for SeiT's tokens).
        code_dim: D, the code-vector dimension (32).
        scale: s, f's upsampling factor (2).
        embed_dim, depth, num_heads, mlp_ratio: each ViT's size (384, 1,
            6, 4).
        grid: the nominal token grid f takes (32) and ``out_grid`` the one
            g gives (28); with sin-cos positions other grids work too.
        vit: further :class:`ViTEncoder` / :class:`ViTDecoder` options
            (default :data:`OFFICIAL_VIT`).
    """

    def __init__(self, num_codes: int = 391, code_dim: int = 32,
                 scale: int = 2, embed_dim: int = 384, depth: int = 1,
                 num_heads: int = 6, mlp_ratio: float = 4.0,
                 grid: int = 32, out_grid: int = 28,
                 vit: Optional[dict] = None):
        super().__init__()
        self.num_codes, self.code_dim, self.scale = num_codes, code_dim, scale
        vit = dict(OFFICIAL_VIT if vit is None else vit)
        sizes = dict(patch_size=scale, embed_dim=embed_dim, depth=depth,
                     num_heads=num_heads, mlp_ratio=mlp_ratio, **vit)
        self.f = ViTDecoder(in_channels=code_dim, out_channels=code_dim,
                            img_size=grid * scale, **sizes)
        self.g = ViTEncoder(in_channels=code_dim, out_channels=num_codes,
                            img_size=out_grid * scale, **sizes)

    def forward(self, z: torch.Tensor, params: AffineCropParams,
                out_grid) -> torch.Tensor:
        """Logits ``(B, K, *out_grid)`` of ``g(A(f(z)))`` for the
        augmentation ``params`` (bilinear in f-space)."""
        lifted = self.f(z)
        size = (out_grid[0] * self.scale, out_grid[1] * self.scale)
        return self.g(apply_affine_crop(lifted, params, size))


@MODELS.register_module()
class TokenAdaptTrainer(BaseModel):
    """Learns :class:`TokenAdapt` from token pairs made online by a frozen
    tokenizer (see the module docstring).

    A batch of images ``x`` (RGB ``[0, 255]``, e.g. 256 × 256) gives
    ``T_x = tokenizer(x)`` and ``T_A(x) = tokenizer(A(x))`` with ``A`` drawn
    per sample (:func:`sample_affine_crop`, output ``crop_fraction`` of the
    side, bicubic); the loss is the cross-entropy of
    ``TokenAdapt(codebook[T_x], A)`` against ``T_A(x)``. Only TokenAdapt is
    trained and saved: the tokenizer is frozen (:func:`freeze_as_buffers`)
    and never in checkpoints; its codebook is the quantizer's
    ``code_vectors()`` (what SeiT's ``codebook.ckpt`` stores).

    Args:
        token_adapt: the :class:`TokenAdapt` config (its ``num_codes`` /
            ``code_dim`` must match the tokenizer).
        tokenizer: ``dict(config=..., checkpoint=...)`` (local paths) or a
            tokenizer module (tests).
        crop_fraction: side of the pixel crop over the image side (224 /
            256 = 0.875).
        augment: :func:`sample_affine_crop` options (scale / ratio of the
            crop box, flip / affine probabilities and ranges).
        label_smoothing: of the cross-entropy.
    """

    def __init__(self, token_adapt: dict,
                 tokenizer: Union[dict, nn.Module],
                 crop_fraction: float = 224 / 256,
                 augment: Optional[dict] = None,
                 label_smoothing: float = 0.0,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor or dict(
            type='ImgDataPreprocessor'), init_cfg=init_cfg)
        self.token_adapt = MODELS.build(token_adapt)
        self.crop_fraction = crop_fraction
        self.augment = dict(augment or {})
        self.label_smoothing = label_smoothing
        self._tokenizer_cfg = None
        self._tokenizer: List[nn.Module] = []  # not a child: not saved
        if isinstance(tokenizer, nn.Module):
            self._set_tokenizer(prepare_tokenizer(tokenizer, freeze=True))
        else:
            missing = {'config', 'checkpoint'} - set(tokenizer)
            if missing:
                raise KeyError(f'model.tokenizer needs the keys config and '
                               f'checkpoint (local paths), lacks '
                               f'{sorted(missing)}')
            self._tokenizer_cfg = dict(tokenizer)

    def _set_tokenizer(self, model: nn.Module) -> None:
        quantizer = getattr(model, 'quantizer', None)
        if not hasattr(quantizer, 'code_vectors'):
            raise TypeError(f'the tokenizer {type(model).__name__} has no '
                            f'quantizer with code_vectors() (a vector '
                            f'quantizer): TokenAdapt embeds codes with it')
        codebook = quantizer.code_vectors()
        adapt = self.token_adapt
        if tuple(codebook.shape) != (adapt.num_codes, adapt.code_dim):
            raise ValueError(
                f'the tokenizer has a {tuple(codebook.shape)} codebook; '
                f'model.token_adapt has num_codes={adapt.num_codes}, '
                f'code_dim={adapt.code_dim}')
        self._tokenizer[:] = [model]

    @property
    def tokenizer(self) -> nn.Module:
        """The frozen tokenizer (loaded from ``tokenizer.config`` /
        ``tokenizer.checkpoint`` on first use)."""
        if not self._tokenizer:
            cfg = self._tokenizer_cfg
            self._set_tokenizer(prepare_tokenizer(
                cfg['config'], cfg['checkpoint'], freeze=True,
                checkpoint_key='model.tokenizer.checkpoint',
                config_key='model.tokenizer.config'))
        tokenizer = self._tokenizer[0]
        device = next(self.token_adapt.parameters()).device
        if tokenizer.quantizer.code_vectors().device != device:
            tokenizer.to(device)
        return tokenizer

    def init_weights(self) -> None:
        super().init_weights()
        self.tokenizer  # fail before iteration 0 if the files are missing

    def make_pairs(self, images: torch.Tensor,
                   params: Optional[AffineCropParams] = None):
        """``(T_x, T_A(x), params)`` of images ``(B, 3, H, W)`` in
        ``[0, 255]`` (``params`` drawn when not given)."""
        if params is None:
            params = sample_affine_crop(
                len(images), aspect=images.shape[-1] / images.shape[-2],
                **self.augment)
        size = tuple(round(s * self.crop_fraction)
                     for s in images.shape[-2:])
        augmented = apply_affine_crop(images.float(), params, size,
                                      mode='bicubic').clamp(0, 255)
        tokenizer = self.tokenizer
        return (encode_images(tokenizer, images.float()),
                encode_images(tokenizer, augmented), params)

    def adapt_logits(self, tokens: torch.Tensor, params: AffineCropParams,
                     out_grid) -> torch.Tensor:
        """TokenAdapt's logits for ``tokens`` ``(B, h, w)``."""
        codebook = self.tokenizer.quantizer.code_vectors()
        device = codebook.device
        z = codebook[tokens.to(device)].permute(0, 3, 1, 2)
        return self.token_adapt(z, params, out_grid)

    def forward(self, inputs: torch.Tensor, data_samples=None,
                mode: str = 'tensor') -> Union[Dict[str, torch.Tensor],
                                               torch.Tensor]:
        tokens, target, params = self.make_pairs(inputs)
        logits = self.adapt_logits(tokens, params, target.shape[-2:])
        target = target.to(logits.device)
        if mode == 'loss':
            loss = F.cross_entropy(logits, target,
                                   label_smoothing=self.label_smoothing)
            accuracy = (logits.argmax(1) == target).float().mean()
            return dict(loss=loss, token_accuracy=accuracy.detach())
        if mode == 'predict':
            return [dict(pred=p, target=t) for p, t in
                    zip(logits.argmax(1).cpu(), target.cpu())]
        return logits
