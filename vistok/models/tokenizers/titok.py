"""TiTok 1-D image tokenizer (Yu et al. 2024, "An Image is Worth 32 Tokens
for Reconstruction and Generation"), the base of MARVEL.

``images (B, 3, H, W)`` in [-1, 1] → :class:`LatentTokenEncoder` → latent
tokens ``(B, C_q, K)`` → quantizer (TiTok: l2-normalised VQ, 4096 × 12;
MARVEL: residual LFQ) → :class:`LatentTokenDecoder` → features
``(B, width, h, w)`` → head → images. Three ways to get pixels (§3.3):

* stage 1 of the two-stage recipe, ``head='proxy'``: a
  :class:`TokenLogitHead` (1×1 conv → tanh → 1×1 conv, hidden
  ``2·width``) gives logits ``(B, V, h, w)`` over a frozen teacher
  tokenizer's ``V`` codes (MaskGIT-VQGAN, 1024); the loss is the
  cross-entropy to ``teacher.encode(images)`` plus the quantizer's terms,
  and images are the teacher's decoding of the argmax codes;
* stage 2, ``head='proxy'`` with a ``pixel_decoder``: the logits'
  softmax weights a trainable copy of the teacher's codebook
  (``pixel_codebook`` ``(V, C)``) and the teacher's decoder architecture
  (``pixel_decoder``) renders images, trained on pixels (L2, perceptual,
  GAN) with the encoder and quantizer frozen (``frozen_parts``);
* single stage, ``head='pixel'``: a :class:`PixelHead` (1×1 conv to
  ``p·p·3`` values, unpatchify, 3×3 conv) trained on pixels directly.

Training, EMA, the discriminator step and evaluation are those of
:class:`~vistok.models.tokenizers.base.BaseTokenizer`; this class only
supplies the network through its public extension points.

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
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.models.heads.pixel import PixelHead
from vistok.models.heads.token_logit import TokenLogitHead
from vistok.models.utils import freeze_as_buffers, load_frozen_weights
from vistok.registry import BACKBONES, HEADS, MODELS, QUANTIZERS
from vistok.structures import TokenizerOutput
from vistok.utils.partial_load import load_pretrained
from vistok.utils.weights import load_state_dict_file
from .base import BaseTokenizer, PartCfg

__all__ = ['TiTokTokenizer', 'legacy_token_layout']

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
class TiTokTokenizer(BaseTokenizer):
    """TiTok: images → ``K`` 1-D tokens → decoder features → proxy-code
    logits or pixels (see the module docstring for the three modes and the
    legacy layout).

    ``encode(images) -> (B, K)`` ids (``(B, K, D)`` for a residual
    quantizer of depth ``D``), ``decode(ids) -> images (B, 3, H, W)``,
    :meth:`head_output` gives the head's raw output (proxy logits);
    ``decode(encode(x))`` equals ``reconstruct(x).reconstruction``
    exactly.

    Network args (:meth:`build_network`; the training keys are
    :class:`~vistok.models.tokenizers.base.BaseTokenizer`'s):
        encoder: BACKBONES config / module (:class:`LatentTokenEncoder`).
        quantizer: QUANTIZERS config / module taking ``(B, C_q, K)``.
        decoder: BACKBONES config / module (:class:`LatentTokenDecoder`).
        head: ``'proxy'``, ``'pixel'`` or a HEADS config / module mapping
            the decoder's ``(B, width, h, w)`` features to images.
        pixel_decoder: MODELS config / module of a tokenizer (the
            teacher's, MaskGIT-VQGAN) whose ``quantizer.codebook`` ``(V,
            C)``, ``post_quant_conv`` (if any) and ``decoder`` become the
            trainable ``pixel_codebook`` (an embedding,
            ``pixel_codebook.weight``), ``pixel_post_quant_conv`` and
            ``pixel_decoder`` of stage 2 (``head='proxy'`` only); fill them
            with ``pretrained``.
        teacher: MODELS config / module of a tokenizer whose
            ``encode(images)`` gives ``(B, h, w)`` code ids (stage 1). It is
            frozen (buffers, not in the state dict) and filled from
            ``teacher_path`` in :meth:`init_weights`.
        teacher_path: checkpoint of the teacher (config key
            ``model.teacher_path``).
        num_proxy_codes: ``V`` of the ``'proxy'`` head (teacher codebook).
        proxy_hidden_ratio: hidden width of the ``'proxy'`` head over the
            decoder width (TiTok: 2).
        pixel_refine_kernel_size: final conv of the ``'pixel'`` head (TiTok:
            3).
        is_legacy: reproduce the released checkpoints' latent reshape
            (TiTok issue #17).
        pixel_range: ``(lo, hi)`` value range the encoder sees and a
            ``'pixel'`` head produces (TiTok's released weights: ``(0,
            1)``); vistok's [-1, 1] images are mapped onto it on the way in
            and back on the way out. ``None`` keeps [-1, 1]. (A
            ``pixel_decoder`` maps its own range, as the teacher does.)
        proxy_loss_weight: weight of the stage-1 proxy cross-entropy.
        pretrained: keyword arguments of
            :func:`vistok.utils.partial_load.load_pretrained` (a dict with
            ``checkpoint``), or a dict of such loads by name, applied in
            order in :meth:`init_weights` (e.g. MARVEL stage 1 from a TiTok
            checkpoint with the VQ codebook named as unexpected; stage 2
            ``dict(stage1=..., pixel_parts=...)``, so a config overrides one
            by name). The EMA copy restarts from the loaded weights.

    Training defaults: L2 reconstruction (``MSELoss``); the adaptive GAN
    weight at the last weight of the module producing pixels; a
    discriminator only in the pixel modes (:attr:`trains_on_pixels`).
    """

    NON_GENERATOR_PARTS = BaseTokenizer.NON_GENERATOR_PARTS + ('teacher', )
    #: TiTok's L2
    default_reconstruction_loss = dict(type='MSELoss')

    def build_network(self,
                      encoder: PartCfg,
                      quantizer: PartCfg,
                      decoder: PartCfg,
                      head: Union[str, PartCfg] = 'proxy',
                      pixel_decoder: Optional[PartCfg] = None,
                      teacher: Optional[PartCfg] = None,
                      teacher_path: Optional[str] = None,
                      num_proxy_codes: int = 1024,
                      proxy_hidden_ratio: int = 2,
                      pixel_refine_kernel_size: Optional[int] = 3,
                      is_legacy: bool = False,
                      pixel_range: Optional[Tuple[float, float]] = None,
                      proxy_loss_weight: float = 1.0,
                      pretrained: Optional[dict] = None) -> None:
        self.encoder = BACKBONES.build_or_take(encoder)
        self.quantizer = QUANTIZERS.build_or_take(quantizer)
        self.decoder = BACKBONES.build_or_take(decoder)
        width = self.decoder.out_channels
        if head == 'proxy':
            self.head = TokenLogitHead(width, num_proxy_codes,
                                       proxy_hidden_ratio * width, 'tanh')
        elif head == 'pixel':
            self.head = PixelHead(width, self.decoder.patch_size,
                                  self.encoder.in_channels,
                                  pixel_refine_kernel_size)
        elif isinstance(head, (dict, nn.Module)):
            self.head = HEADS.build_or_take(head)
        else:
            raise ValueError(f"model.head must be 'proxy', 'pixel' or a "
                             f'HEADS config, got {head!r}')
        self.head_type = head if isinstance(head, str) else 'custom'
        self.pixel_codebook = self.pixel_decoder = None
        if pixel_decoder is not None:
            self._build_pixel_decoder(pixel_decoder, num_proxy_codes)
        self.is_legacy = is_legacy
        if is_legacy:
            self.encoder.proj_out.register_forward_pre_hook(
                legacy_token_layout)
        self.pixel_range = None if pixel_range is None else tuple(pixel_range)
        self.teacher = None
        if teacher is not None:
            self.teacher = freeze_as_buffers(MODELS.build_or_take(teacher))
        self.teacher_path = teacher_path
        pretrained = dict(pretrained or {})
        if 'checkpoint' in pretrained:
            pretrained = {'': pretrained}
        self.pretrained = copy.deepcopy(pretrained)
        self.proxy_loss_weight = proxy_loss_weight

    def _build_pixel_decoder(self, tokenizer: PartCfg,
                             num_proxy_codes: int) -> None:
        if self.head_type != 'proxy':
            raise ValueError("model.pixel_decoder needs head='proxy'")
        tokenizer = MODELS.build_or_take(tokenizer)
        codebook = getattr(tokenizer.quantizer, 'codebook', None)
        if (not torch.is_tensor(codebook) or codebook.dim() != 2
                or codebook.shape[0] != num_proxy_codes):
            raise ValueError(
                f'model.pixel_decoder: its quantizer must have a codebook '
                f'(V={num_proxy_codes}, C), got '
                f'{None if codebook is None else tuple(codebook.shape)}')
        if not isinstance(getattr(tokenizer.quantizer, 'project_out', None),
                          (nn.Identity, type(None))):
            raise ValueError('model.pixel_decoder: a quantizer with code '
                             'space projections is not supported')
        # the codes as the teacher looks them up (unit norm for an l2 VQ)
        self.pixel_codebook_l2 = bool(
            getattr(tokenizer.quantizer, 'use_l2_norm', False))
        self.pixel_post_quant_conv = getattr(tokenizer, 'post_quant_conv',
                                             nn.Identity())
        self.pixel_codebook = nn.Embedding(*codebook.shape)
        self.pixel_codebook.weight.data.copy_(codebook.detach())
        self.pixel_decoder = tokenizer.decoder

    def default_last_layer(self) -> str:
        """The last weight of the module producing pixels."""
        name = 'pixel_decoder' if self.pixel_decoder is not None else 'head'
        weights = [
            f'{name}.{key}'
            for key, _ in getattr(self, name).named_parameters()
            if key.endswith('weight')
        ]
        return weights[-1] if weights else ''

    @property
    def proxy_training(self) -> bool:
        """Stage 1: proxy logits, trained against the teacher's codes."""
        return self.head_type == 'proxy' and self.pixel_decoder is None

    @property
    def trains_on_pixels(self) -> bool:
        """Stage 1 trains on proxy codes, so no discriminator there."""
        return not self.proxy_training

    def init_inference_weights(self) -> None:
        """Fill the frozen teacher (stage 1 renders images with it) from
        ``teacher_path``; ``MissingWeightsError`` naming
        ``model.teacher_path`` when the file is missing. Checkpoints do not
        hold it: ``load_tokenizer`` and testing call this."""
        super().init_inference_weights()
        if self.teacher is not None:
            state = load_state_dict_file(self.teacher_path,
                                         'model.teacher_path',
                                         TEACHER_HOW_TO_GET)
            load_frozen_weights(self.teacher, state, self.teacher_path)

    def init_weights(self) -> None:
        """Initialise the trained parts, fill the teacher
        (:meth:`init_inference_weights`), then apply ``pretrained`` in
        order."""
        super().init_weights()
        self.init_inference_weights()
        for name, kwargs in self.pretrained.items():
            key = '.'.join(filter(None, ('model.pretrained', name,
                                         'checkpoint')))
            load_pretrained(self, key=key, **kwargs)
        if self.pretrained and self.ema is not None:
            self.ema.restart()  # the next update copies the loaded weights

    # --- tokenizer API ---------------------------------------------------
    def _to_range(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images → :attr:`pixel_range`."""
        if self.pixel_range is None:
            return images
        low, high = self.pixel_range
        return (images + 1) * (0.5 * (high - low)) + low

    def _head(self, quantized: torch.Tensor) -> torch.Tensor:
        """Decoder and head on the quantized latent ``(B, C_q, K)``; a
        pixel head's output is mapped from :attr:`pixel_range` to [-1,
        1]."""
        out = self.head(self.decoder(quantized))
        if self.pixel_range is None or self.head_type == 'proxy':
            return out
        low, high = self.pixel_range
        return (out - low) * (2.0 / (high - low)) - 1

    def _render(self, head_output: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` of a head output: itself (pixel heads),
        the pixel decoder of the softmax-weighted codebook (stage 2), or
        the teacher's decoding of the argmax codes (stage 1)."""
        if self.head_type != 'proxy':
            return head_output
        if self.pixel_decoder is not None:
            weights = head_output.softmax(dim=1)
            codes = self.pixel_codebook.weight
            if self.pixel_codebook_l2:
                codes = F.normalize(codes, dim=-1)
            latent = torch.einsum('bvhw,vc->bchw', weights,
                                  codes.to(weights.dtype))
            return self.pixel_decoder(self.pixel_post_quant_conv(latent))
        if self.teacher is None:
            raise ValueError('rendering proxy codes to images needs '
                             'model.teacher or model.pixel_decoder')
        return self.teacher.decode(head_output.argmax(dim=1))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, K[, D])`` of ``images`` ``(B, 3, H, W)`` in
        [-1, 1]."""
        return self.quantizer.encode(self.encoder(self._to_range(images)))

    def head_output(self, tokens: torch.Tensor) -> torch.Tensor:
        """The head's output for ids ``(B, K[, D])``: proxy logits
        ``(B, V, h, w)`` or images ``(B, 3, H, W)``."""
        return self._head(self.quantizer.decode(tokens))

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in about [-1, 1] of ids ``(B, K[,
        D])``."""
        return self._render(self.head_output(tokens))

    def _quantize(self, images: torch.Tensor):
        latent = self.encoder(self._to_range(images))
        return latent, self.quantizer(latent)

    def reconstruct(self, images: torch.Tensor) -> TokenizerOutput:
        """Full pass; ``latent`` is the quantizer input ``(B, C_q, K)``."""
        latent, quantized = self._quantize(images)
        return TokenizerOutput(
            reconstruction=self._render(self._head(quantized.quantized)),
            quantizer=quantized,
            latent=latent)

    # --- losses ----------------------------------------------------------
    def generator_losses(self, inputs: torch.Tensor,
                         iteration: Optional[int] = None):
        """Pixel modes: :class:`BaseTokenizer`'s. Stage 1:
        ``loss_proxy_ce`` (cross-entropy of the logits to the teacher's
        codes) and ``proxy_acc`` plus the quantizer's terms; no images."""
        if not self.proxy_training:
            return super().generator_losses(inputs, iteration)
        if self.teacher is None:
            raise ValueError("head='proxy' training needs model.teacher")
        _, quantized = self._quantize(inputs)
        logits = self._head(quantized.quantized)
        with torch.no_grad():
            codes = self.teacher.encode(inputs)
        if codes.shape[-2:] != logits.shape[-2:]:
            raise ValueError(
                f'teacher codes of shape {tuple(codes.shape)} do not match '
                f'the proxy logits {tuple(logits.shape)}')
        with torch.autocast(device_type=logits.device.type, enabled=False):
            ce = F.cross_entropy(logits.float(), codes)
        losses = dict(
            loss_proxy_ce=self.proxy_loss_weight * ce,
            proxy_acc=(logits.argmax(1) == codes).float().mean().detach())
        self.merge_terms(losses, self.quantizer_terms(quantized))
        return losses, None
