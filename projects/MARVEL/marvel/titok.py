"""TiTok 1-D image tokenizer (Yu et al. 2024, "An Image is Worth 32 Tokens
for Reconstruction and Generation").

``images (B, 3, H, W)`` in [-1, 1] → :class:`LatentTokenEncoder` → latent
tokens ``(B, C_q, K)`` → quantizer (TiTok: l2-normalised VQ, 4096 × 12) →
:class:`LatentTokenDecoder` → features ``(B, width, h, w)`` → head:

* ``head='proxy'`` (two-stage recipe, stage 1, §3.3): a
  :class:`TokenLogitHead` (1×1 conv → tanh → 1×1 conv, hidden ``2·width``)
  to logits ``(B, V, h, w)`` over a frozen teacher tokenizer's ``V`` codes
  (MaskGIT-VQGAN, 1024); loss = cross-entropy to ``teacher.encode(images)``
  plus the quantizer's (already weighted) terms.
* ``head='pixel'`` (single stage): a :class:`PixelHead` (1×1 conv to
  ``p·p·3`` values, unpatchify, 3×3 conv) to images; loss = the
  reconstruction losses plus the quantizer's terms.

Legacy latent layout (TiTok issue #17): the released two-stage checkpoints
(TiTok-L-32 / B-64 / S-128) were trained with an encoder that reshapes its
``(B, K, width)`` latent-token outputs straight to ``(B, width, K, 1)``
without a permute before the 1×1 ``conv_out``. With ``is_legacy=True`` the
projection therefore sees, at token ``k``, channel ``c`` the value
``flat[c·K + k]`` of the row-major flattened ``(K, width)`` outputs
(``x.reshape(B, width, K).transpose(1, 2)``) instead of ``x[k, c]``; this
is what released weights need to reconstruct anything. The decoder's
``(B, C, 1, K) → (B, K, C)`` reshape in TiTok is a proper permute in both
modes, so only the encoder is affected.
"""
import copy
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModel

from vistok.models.frozen import freeze_as_buffers, load_frozen_weights
from vistok.models.heads.pixel import PixelHead
from vistok.models.heads.token_logit import TokenLogitHead
from vistok.models.tokenizers.autoencoder import (DEFAULT_DATA_PREPROCESSOR,
                                                  AutoencoderTokenizer,
                                                  build_losses, build_part)
from vistok.registry import BACKBONES, HEADS, MODELS, QUANTIZERS
from vistok.structures import DataSample
from vistok.utils.partial_load import load_pretrained
from vistok.utils.weights import load_state_dict_file

__all__ = ['TiTokTokenizer', 'legacy_token_layout']

PartCfg = Union[dict, nn.Module]

TEACHER_HOW_TO_GET = (
    "Convert TiTok's maskgit-vqgan-imagenet-f16-256.bin "
    '(huggingface.co/fun-research/TiTok) with '
    'tools/model_converters/maskgit_vqgan.py, or give the checkpoint of any '
    'vistok tokenizer matching model.teacher.')


def legacy_token_layout(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook for the encoder's ``proj_out``: reinterpret its
    ``(B, K, width)`` input as TiTok's legacy encoder does (issue #17):
    ``x.reshape(B, width, K).transpose(1, 2)`` (no permute before the
    reshape). Returns the new positional arguments."""
    x = args[0]
    batch, tokens, width = x.shape
    return (x.reshape(batch, width, tokens).transpose(1, 2), ) + args[1:]


@MODELS.register_module()
class TiTokTokenizer(BaseModel):
    """TiTok: images → ``K`` 1-D tokens → decoder features → proxy-code
    logits or pixels (see the module docstring for the layouts and the
    legacy mode).

    ``encode(images) -> (B, K)`` ids, ``decode(ids) -> head output``
    (logits ``(B, V, h, w)`` for ``'proxy'``, images ``(B, 3, H, W)`` for
    ``'pixel'``); ``decode(encode(x))`` equals ``forward(x, mode='tensor')``
    exactly. With a proxy head, :meth:`decode_images` renders ids to pixels
    through the teacher (argmax codes → teacher decoder, TiTok's stage-1
    evaluation).

    Args:
        encoder: BACKBONES config / module (:class:`LatentTokenEncoder`).
        quantizer: QUANTIZERS config / module taking ``(B, C_q, K)``.
        decoder: BACKBONES config / module (:class:`LatentTokenDecoder`).
        head: ``'proxy'``, ``'pixel'`` or a HEADS config / module mapping
            the decoder's ``(B, width, h, w)`` features to the output.
        teacher: MODELS config / module of a tokenizer whose
            ``encode(images)`` gives ``(B, h, w)`` code ids (required for
            ``'proxy'`` training). It is frozen (buffers, not in the state
            dict) and filled from ``teacher_path`` in :meth:`init_weights`.
        teacher_path: checkpoint of the teacher (config key
            ``model.teacher_path``).
        num_proxy_codes: ``V`` of the ``'proxy'`` head (teacher codebook).
        proxy_hidden_ratio: hidden width of the ``'proxy'`` head over the
            decoder width (TiTok: 2).
        pixel_refine_kernel_size: final conv of the ``'pixel'`` head (TiTok:
            3).
        is_legacy: reproduce the released checkpoints' latent reshape
            (TiTok issue #17).
        pixel_range: ``(lo, hi)`` value range the encoder sees and a pixel
            head produces (TiTok's released weights: ``(0, 1)``); vistok's
            [-1, 1] images are mapped onto it on the way in and back on the
            way out. ``None`` keeps [-1, 1].
        reconstruction_loss: LOSSES config(s) for ``'pixel'`` heads
            (default ``MSELoss``, TiTok's L2).
        proxy_loss_weight: weight of the proxy cross-entropy.
        pretrained: keyword arguments of
            :func:`vistok.utils.partial_load.load_pretrained`, applied in
            :meth:`init_weights` (e.g. MARVEL stage 1 from a TiTok
            checkpoint: encoder, decoder and head kept, the VQ codebook
            named as unexpected since the residual LFQ has none).
        data_preprocessor: defaults to mapping uint8 RGB to [-1, 1].
        init_cfg: mmengine weight-initialisation config.
    """

    def __init__(self,
                 encoder: PartCfg,
                 quantizer: PartCfg,
                 decoder: PartCfg,
                 head: Union[str, PartCfg] = 'proxy',
                 teacher: Optional[PartCfg] = None,
                 teacher_path: Optional[str] = None,
                 num_proxy_codes: int = 1024,
                 proxy_hidden_ratio: int = 2,
                 pixel_refine_kernel_size: Optional[int] = 3,
                 is_legacy: bool = False,
                 pixel_range: Optional[Tuple[float, float]] = None,
                 reconstruction_loss=None,
                 proxy_loss_weight: float = 1.0,
                 pretrained: Optional[dict] = None,
                 data_preprocessor: Optional[PartCfg] = None,
                 init_cfg=None):
        if data_preprocessor is None:
            data_preprocessor = copy.deepcopy(DEFAULT_DATA_PREPROCESSOR)
        super().__init__(data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        self.encoder = build_part(BACKBONES, encoder)
        self.quantizer = build_part(QUANTIZERS, quantizer)
        self.decoder = build_part(BACKBONES, decoder)
        width = self.decoder.out_channels
        if head == 'proxy':
            self.head = TokenLogitHead(width, num_proxy_codes,
                                       proxy_hidden_ratio * width, 'tanh')
        elif head == 'pixel':
            self.head = PixelHead(width, self.decoder.patch_size,
                                  self.encoder.in_channels,
                                  pixel_refine_kernel_size)
        elif isinstance(head, (dict, nn.Module)):
            self.head = build_part(HEADS, head)
        else:
            raise ValueError(f"model.head must be 'proxy', 'pixel' or a "
                             f'HEADS config, got {head!r}')
        self.head_type = head if isinstance(head, str) else 'custom'
        self.is_legacy = is_legacy
        if is_legacy:
            self.encoder.proj_out.register_forward_pre_hook(
                legacy_token_layout)
        self.pixel_range = None if pixel_range is None else tuple(pixel_range)
        self.teacher = None
        if teacher is not None:
            self.teacher = freeze_as_buffers(build_part(MODELS, teacher))
        self.teacher_path = teacher_path
        self.pretrained = copy.deepcopy(pretrained)
        self.reconstruction_losses, _ = build_losses(
            reconstruction_loss or dict(type='MSELoss'),
            'model.reconstruction_loss')
        self.proxy_loss_weight = proxy_loss_weight

    def init_weights(self) -> None:
        """Initialise the trained parts, fill the frozen teacher from
        ``teacher_path`` (``MissingWeightsError`` naming
        ``model.teacher_path`` when it is missing), then load ``pretrained``
        weights."""
        super().init_weights()
        if self.teacher is not None:
            state = load_state_dict_file(self.teacher_path,
                                         'model.teacher_path',
                                         TEACHER_HOW_TO_GET)
            load_frozen_weights(self.teacher, state, self.teacher_path)
        if self.pretrained:
            load_pretrained(self, key='model.pretrained.checkpoint',
                            **self.pretrained)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def _to_range(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images → :attr:`pixel_range`."""
        if self.pixel_range is None:
            return images
        low, high = self.pixel_range
        return (images + 1) * (0.5 * (high - low)) + low

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        """The head; a pixel head's output mapped from
        :attr:`pixel_range` back to [-1, 1]."""
        out = self.head(features)
        if self.pixel_range is None or self.head_type == 'proxy':
            return out
        low, high = self.pixel_range
        return (out - low) * (2.0 / (high - low)) - 1

    # --- tokenizer API ---------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, K)`` of ``images`` ``(B, 3, H, W)`` in
        [-1, 1]."""
        return self.quantizer.encode(self.encoder(self._to_range(images)))

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Head output of token ids ``(B, K)``: proxy logits
        ``(B, V, h, w)`` or images ``(B, 3, H, W)``."""
        return self._head(self.decoder(self.quantizer.decode(tokens)))

    @torch.no_grad()
    def decode_images(self, tokens: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in about [-1, 1] of ids ``(B, K)``: the
        pixel head's output, or the teacher's decoding of the argmax proxy
        codes."""
        out = self.decode(tokens)
        if self.head_type != 'proxy':
            return out
        if self.teacher is None:
            raise ValueError('decode_images with a proxy head needs '
                             'model.teacher')
        return self.teacher.decode(out.argmax(dim=1))

    def forward(self,
                inputs: torch.Tensor,
                data_samples: Optional[List[DataSample]] = None,
                mode: str = 'tensor'):
        """``'tensor'``: dict(output=head output ``(B, V | 3, h | H, w |
        W)``, quantizer=QuantizerOutput, latent=``(B, C_q, K)``);
        ``'loss'``: named losses; ``'predict'``: DataSamples."""
        if mode == 'tensor':
            return self._full_pass(inputs)
        if mode == 'loss':
            return self.loss(inputs)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        raise ValueError(f'mode must be "tensor", "loss" or "predict", '
                         f'got {mode!r}')

    def _full_pass(self, images: torch.Tensor) -> dict:
        latent = self.encoder(self._to_range(images))
        quantized = self.quantizer(latent)
        output = self._head(self.decoder(quantized.quantized))
        return dict(output=output, quantizer=quantized, latent=latent)

    # --- losses ----------------------------------------------------------
    def loss(self, inputs: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Proxy head: ``loss_proxy_ce`` (cross-entropy of the logits to the
        teacher's codes, TiTok stage 1) and ``proxy_acc``; pixel head: the
        reconstruction losses. Plus the quantizer's terms and scalar
        stats."""
        out = self._full_pass(inputs)
        if self.head_type == 'proxy':
            if self.teacher is None:
                raise ValueError("head='proxy' training needs model.teacher")
            with torch.no_grad():
                codes = self.teacher.encode(inputs)
            logits = out['output']
            if codes.shape[-2:] != logits.shape[-2:]:
                raise ValueError(
                    f'teacher codes of shape {tuple(codes.shape)} do not '
                    f'match the proxy logits {tuple(logits.shape)}')
            with torch.autocast(device_type=logits.device.type, enabled=False):
                ce = F.cross_entropy(logits.float(), codes)
            losses = dict(
                loss_proxy_ce=self.proxy_loss_weight * ce,
                proxy_acc=(logits.argmax(1) == codes).float().mean().detach())
        else:
            losses = {
                loss.loss_name: loss(out['output'], inputs)
                for loss in self.reconstruction_losses
            }
        losses.update(out['quantizer'].loss)
        losses.update({
            name: value.detach()
            for name, value in out['quantizer'].stats.items()
            if value.ndim == 0
        })
        return losses

    # --- inference -------------------------------------------------------
    @torch.no_grad()
    def predict(
            self,
            inputs: torch.Tensor,
            data_samples: Optional[List[DataSample]] = None
    ) -> List[DataSample]:
        """One :class:`DataSample` per image with ``pred_img`` / ``gt_img``
        (``(3, H, W)`` in ``[0, 255]``, via :meth:`decode_images`) and
        ``tokens`` ``(K,)``."""
        tokens = self.encode(inputs)
        pred = self._to_pixels(self.decode_images(tokens))
        gt = self._to_pixels(inputs)
        if data_samples is None:
            data_samples = [DataSample() for _ in range(inputs.shape[0])]
        for i, sample in enumerate(data_samples):
            sample.set_metainfo(dict(codebook_size=self.codebook_size))
            sample.pred_img, sample.gt_img = pred[i], gt[i]
            sample.tokens = tokens[i]
        return data_samples

    #: undo the data preprocessor's normalisation, clamp to [0, 255]
    _to_pixels = AutoencoderTokenizer.to_pixels
