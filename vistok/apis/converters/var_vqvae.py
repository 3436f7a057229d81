"""VAR's multi-scale VQVAE tokenizer (FoundationVision/VAR,
``vae_ch160v4096z32.pth``) -> vistok's ``AutoencoderTokenizer`` with
``ConvEncoder`` / ``MultiScaleResidualQuantizer`` / ``ConvDecoder``
(command line: ``tools/model_converters/var_vqvae.py``).

The release is the plain state dict of ``VQVAE(vocab_size=4096,
z_channels=32, ch=160, test_mode=True, share_quant_resi=4,
v_patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16))`` (``build_vae_var`` in
``models/__init__.py``; ``train.py`` loads it with ``strict=True``). Layout
read from ``models/{vqvae,basic_vae,quant}.py`` at commit
78b95394fc5896192e3a003e4b295f8ea743c48f (MIT licence); the independent
reference forward is ``tests/reference/var_vqvae_official.py``.

Key mapping (vistok ``vistok/models/backbones/conv.py``,
``vistok/models/quantizers/multiscale.py``):

* ``encoder.down.{i}.downsample.*`` -> ``encoder.down.{i}.resample.*``;
  ``decoder.up.{i}.upsample.*`` -> ``decoder.up.{i}.resample.*``;
* ``{A}.qkv.{weight,bias}`` of every ``AttnBlock`` ``A`` (the lowest level's
  ``down.4.attn.{j}`` / ``up.4.attn.{j}`` and ``mid.attn_1`` of both
  halves): the fused 1x1 conv ``(3C, C, 1, 1)`` is split into
  ``{A}.q`` / ``{A}.k`` / ``{A}.v`` — its output channels are ``[q | k |
  v]`` (``qkv.reshape(B, 3, C, H, W).unbind(1)``); ``norm`` and
  ``proj_out`` keep their names;
* ``quantize.embedding.weight`` (``4096 x 32``) ->
  ``quantizer.quantizer.codebook`` (the inner ``VectorQuantizer``);
* ``quantize.quant_resi.qresi_ls.{k}.*`` (the ``Phi`` 3x3 convs of
  ``PhiPartiallyShared``, ``k < share_quant_resi = 4``) ->
  ``quantizer.phi_convs.{k}.*``;
* every other ``encoder.*``, ``decoder.*``, ``quant_conv.*`` and
  ``post_quant_conv.*`` (3x3: the config sets
  ``quant_conv_kernel_size=3``) key keeps its name;
* every tensor also goes to the model's EMA copy ``ema.*`` when the config
  keeps one.

Dropped on purpose (:data:`IGNORE_UNMAPPED`): ``quantize.ema_vocab_hit_SV``,
the only buffer: a running count of code hits per scale, updated only in
distributed training and read only for the logged usage percentages (not
weights; VAR's own ``VQVAE.load_state_dict`` replaces it when its number of
rows differs from the model's scales). vistok keys without a counterpart
(the training half's discriminator, LeCam statistics, ``ema.num_updates``)
keep their initial values (:data:`ALLOW_MISSING`).

What the state dict cannot say and the config must
(:func:`check_layout` refuses a config that differs): the plain Euclidean
look-up (``VectorQuantizer2(using_znorm=False)``: ``model.quantizer.
quantizer.use_l2_norm=False``), ``Φ(h) = 0.5·h + 0.5·conv(h)``
(``quant_resi=0.5``: ``model.quantizer.phi_ratio=0.5``) and images in
``[-1, 1]`` (``pixel_range=(-1, 1)``, the default). The scales are not in
the checkpoint either: VAR uses ``(1, 2, 3, 4, 5, 6, 8, 10, 13, 16)`` at
256 px, and the same tokenizer with ``(1, 2, 3, 4, 6, 9, 13, 18, 24, 32)``
for its 512 px model (``--pn 512``, ``utils/arg_util.py``); set
``model.quantizer.scales`` to the ones the generator was trained with.
Attention placement, kernel sizes, shortcut layout and the number of Φ
convs are fixed by the keys and shapes, which the conversion checks one by
one.
"""
from typing import Mapping, Tuple

import torch
import torch.nn as nn

from vistok.models.backbones.conv import ConvDecoder, ConvEncoder
from vistok.models.quantizers.multiscale import MultiScaleResidualQuantizer
from vistok.models.quantizers.vq import VectorQuantizer
from vistok.utils.convert import TOKENIZER_TRAINING_STATE, rules_with_ema_copy

#: VAR's ``quant_resi`` (``Phi``'s blending ratio; not in the checkpoint)
OFFICIAL_PHI_RATIO = 0.5
#: the image range VAR's tokenizer sees (``normalize_01_into_pm1``)
OFFICIAL_PIXEL_RANGE = (-1.0, 1.0)


class LayoutError(ValueError):
    """The config does not build the model VAR's VQVAE weights mean."""


def split_qkv(tensor: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """The fused ``qkv`` 1x1 conv weight ``(3C, C, 1, 1)`` (or bias
    ``(3C,)``) of VAR's ``AttnBlock`` -> the ``q``, ``k``, ``v`` tensors
    ``(C, C, 1, 1)`` (``(C,)``), each with its own storage. Output channel
    ``t·C + c`` of the fused conv is channel ``c`` of ``[q, k, v][t]``."""
    if tensor.shape[0] % 3:
        raise LayoutError(f'a fused qkv tensor has 3·C output channels, got '
                          f'shape {tuple(tensor.shape)}')
    return tuple(part.clone() for part in tensor.chunk(3, dim=0))


#: (VAR pattern, vistok replacement(s)[, transform]); the first match wins
RULES = [
    (r'encoder\.down\.(\d+)\.downsample\.(.+)',
     r'encoder.down.\1.resample.\2'),
    (r'decoder\.up\.(\d+)\.upsample\.(.+)', r'decoder.up.\1.resample.\2'),
    (r'((?:encoder|decoder)\..+)\.qkv\.(weight|bias)',
     (r'\1.q.\2', r'\1.k.\2', r'\1.v.\2'), split_qkv),
    (r'quantize\.embedding\.weight', 'quantizer.quantizer.codebook'),
    (r'quantize\.quant_resi\.qresi_ls\.(\d+)\.(weight|bias)',
     r'quantizer.phi_convs.\1.\2'),
    (r'((?:encoder|decoder|quant_conv|post_quant_conv)\..+)', r'\1'),
]
#: VAR keys that are not weights (see the module docstring)
IGNORE_UNMAPPED = (r'quantize\.ema_vocab_hit_SV', )
#: vistok keys without a counterpart in the release
ALLOW_MISSING = TOKENIZER_TRAINING_STATE


def rules_for(model) -> list:
    """:data:`RULES`, also writing to the EMA copy of ``model`` (an
    AutoencoderTokenizer) when it keeps one."""
    return rules_with_ema_copy(RULES, model)


def layout_problems(model: nn.Module) -> list:
    """What ``model``'s config sets differently from VAR's VQVAE where the
    state dict cannot tell (empty when it matches); each item names the
    config key and the value to set."""
    encoder = getattr(model, 'encoder', None)
    decoder = getattr(model, 'decoder', None)
    quantizer = getattr(model, 'quantizer', None)
    if not (isinstance(encoder, ConvEncoder)
            and isinstance(decoder, ConvDecoder)
            and isinstance(quantizer, MultiScaleResidualQuantizer)):
        return [f'an AutoencoderTokenizer with a ConvEncoder, a '
                f'MultiScaleResidualQuantizer and a ConvDecoder (got a '
                f'{type(model).__name__} with '
                f'{type(encoder).__name__} / {type(quantizer).__name__} / '
                f'{type(decoder).__name__})']
    problems = []
    inner = quantizer.quantizer
    if not isinstance(inner, VectorQuantizer):
        problems.append(f"model.quantizer.quantizer.type='VectorQuantizer' "
                        f'(got {type(inner).__name__})')
    elif inner.use_l2_norm:
        problems.append('model.quantizer.quantizer.use_l2_norm=False (VAR '
                        'looks codes up by Euclidean distance, '
                        'using_znorm=False)')
    if not quantizer.use_phi:
        problems.append('model.quantizer.use_phi=True')
    elif quantizer.phi_ratio != OFFICIAL_PHI_RATIO:
        problems.append(f'model.quantizer.phi_ratio={OFFICIAL_PHI_RATIO} '
                        f"(VAR's quant_resi)")
    scale, shift = ((OFFICIAL_PIXEL_RANGE[1] - OFFICIAL_PIXEL_RANGE[0]) / 2,
                    sum(OFFICIAL_PIXEL_RANGE) / 2)
    for name, part in (('encoder', encoder), ('decoder', decoder)):
        if (part.pixel_scale, part.pixel_shift) != (scale, shift):
            problems.append(
                f'model.{name}.pixel_range={OFFICIAL_PIXEL_RANGE}')
    return problems


def check_layout(official: Mapping[str, torch.Tensor], model: nn.Module):
    """Refuse a config that does not build the model VAR's weights mean
    (see :func:`layout_problems`); returns ``(no extra keys to drop, a line
    describing the conversion)`` (the ``check`` of
    :func:`vistok.apis.convert.converter_main`).

    Raises:
        LayoutError: listing every difference of the config.
    """
    problems = layout_problems(model)
    if problems:
        raise LayoutError("the config does not build VAR's VQVAE; set: " +
                          '; '.join(problems))
    quantizer = model.quantizer
    num_phi = len(quantizer.phi_convs)
    return (), (f'VAR VQVAE: {quantizer.codebook_size} codes of '
                f'{quantizer.in_channels} channels, scales '
                f'{list(quantizer.scales)} (from the config), {num_phi} Φ '
                f'convs; fused qkv convs split into q / k / v')
