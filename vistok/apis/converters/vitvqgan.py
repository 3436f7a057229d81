"""ViT-VQGAN checkpoints of thuanz123/enhancing-transformers (``ViTVQ``;
the unofficial ViT-VQGAN, Yu et al. 2022, "Vector-quantized Image Modeling
with Improved VQGAN", that SeiT / SeiT++ tokenise ImageNet with) -> vistok's
``AutoencoderTokenizer`` with ``ViTEncoder`` / ``VectorQuantizer`` /
``ViTDecoder`` (command line: ``tools/model_converters/vitvqgan.py``).

Layout read from ``enhancing/modules/stage1/{vitvqgan,layers,quantizers}.py``
at commit e1c185da5cc0eeefdded68cbff888d5b9c248372 (MIT licence); the
independent reference forward is ``tests/reference/vitvqgan_official.py``.
What the vistok config must say for the weights to mean the same thing
(:func:`check_layout` refuses a config that does not): ``qkv_bias=False``,
``mlp_act='tanh'``, ``norm_eps=1e-5``, ``pos_embed='sincos'``,
``pixel_range=(0, 1)`` on both backbones, ``use_l2_norm=True`` on the
quantizer (normalised codes out, as ``quantize`` returns ``z_qnorm``), no
1x1 convs around it, and ``dim = heads · 64`` (the official ``dim_head``).

Key mapping (``{side}`` = ``encoder`` | ``decoder``,
``L = {side}.transformer.layers.{i}``, ``B = {side}.trunk.blocks.{i}``):

* ``encoder.to_patch_embedding.0.*`` -> ``encoder.patch_embed.proj.*``;
* ``L.0.norm.*`` -> ``B.attn_norm.*``; ``L.0.fn.to_qkv.weight`` ->
  ``B.attn.qkv.weight`` (q | k | v chunks, heads major: timm's order);
  ``L.0.fn.to_out.*`` -> ``B.attn.proj.*``;
* ``L.1.norm.*`` -> ``B.ffn_norm.*``; ``L.1.fn.net.{0,2}.*`` ->
  ``B.ffn.{fc1,fc2}.*``; ``{side}.transformer.norm.*`` ->
  ``{side}.trunk.norm.*``;
* ``pre_quant`` (Linear, dim -> code dim) -> ``encoder.proj_out`` (1x1
  conv); ``quantizer.embedding.weight`` -> ``quantizer.codebook``;
  ``post_quant`` (Linear) -> ``decoder.embed`` (1x1 conv);
* ``decoder.to_pixel.1`` (``ConvTranspose2d(dim, C, p, stride=p)``) ->
  ``decoder.head.proj`` (1x1 conv to ``p·p·C`` values, then unpatchify):
  weight ``(dim, C, p, p)`` -> ``(p·p·C, dim, 1, 1)`` in PixelHead's
  ``(i, j, c)`` order, bias ``(C,)`` repeated for the ``p·p`` offsets;
* every tensor of a part the config's EMA keeps is also copied to
  ``ema.*``.

Dropped on purpose: ``{encoder.en,decoder.de}_pos_embedding`` (the fixed
sin-cos tables, stored because they are ``nn.Parameter``\\ s; vistok
recomputes them — :func:`check_layout` first checks they *are* that table)
and ``loss.*`` (:data:`IGNORE_UNMAPPED`: LPIPS and the StyleGAN
discriminator of ``VQLPIPSWithDiscriminator``, training only). vistok keys
without a counterpart keep their initial values (:data:`ALLOW_MISSING`).

SeiT's released ``tokenizer.ckpt`` is a pickled model object (SeiT's
``evaluate_on_images.py`` puts the enhancing-transformers code on
``sys.path`` and ``torch.load``\\ s it); its tokens index the separate
391 x 32 ``codebook.ckpt`` by cosine similarity (``util/misc.py``
``convert_to_tokens``). The script's ``--codebook`` puts that table in
place of the tokenizer's own codebook (:func:`replace_codebook`).
"""
import re
from typing import Mapping, Optional

import torch
import torch.nn as nn

from vistok.models.backbones.vit import (
    ViTDecoder,
    ViTEncoder,
    sincos_pos_embed_2d,
)
from vistok.utils.convert import load_torch_checkpoint, rules_with_ema_copies
from .imagefolder import linear_to_conv1x1

#: the official attention head width (``Attention(dim_head=64)``)
OFFICIAL_DIM_HEAD = 64
#: LayerNorm epsilon of the official blocks (``nn.LayerNorm`` default)
OFFICIAL_NORM_EPS = 1e-5
#: the image range the official weights see (``T.ToTensor()``)
OFFICIAL_PIXEL_RANGE = (0.0, 1.0)
#: the stored sin-cos tables must equal vistok's within this (both are the
#: same float64 formula rounded to float32)
POS_EMBED_ATOL = 1e-5
POS_EMBED_KEYS = dict(encoder='encoder.en_pos_embedding',
                      decoder='decoder.de_pos_embedding')


class LayoutError(ValueError):
    """The checkpoint is not a ``ViTVQ`` layout the config can take, or the
    config does not build the matching vistok model."""


def transpose_conv_to_pixel_head(weight: torch.Tensor) -> torch.Tensor:
    """``ConvTranspose2d`` weight ``(dim, C, p, p)`` (kernel = stride = p)
    -> PixelHead 1x1 conv weight ``(p·p·C, dim, 1, 1)``, output channel
    ``(i·p + j)·C + c`` for pixel offset ``(i, j)`` and channel ``c``."""
    dim, channels, rows, cols = weight.shape
    return weight.permute(2, 3, 1, 0).reshape(rows * cols * channels, dim,
                                              1, 1)


def transpose_conv_bias_to_pixel_head(bias: torch.Tensor,
                                      patch_size: int) -> torch.Tensor:
    """Per-channel bias ``(C,)`` -> ``(p·p·C,)``, the same for every pixel
    offset of a patch."""
    return bias.repeat(patch_size * patch_size)


def block_rules(side: str, target: Optional[str] = None) -> list:
    """Rules of the ``Transformer`` of ``layers.py`` (blocks and final norm)
    of the official module ``side`` (a key prefix, e.g. ``'encoder'``) onto
    the trunk of the vistok ViT backbone ``target`` (default: ``side``)."""
    source, target = re.escape(side), side if target is None else target
    layer = rf'{source}\.transformer\.layers\.(\d+)'
    block = rf'{target}.trunk.blocks.\1'
    return [
        (rf'{layer}\.0\.norm\.(weight|bias)', rf'{block}.attn_norm.\2'),
        (rf'{layer}\.0\.fn\.to_qkv\.weight', rf'{block}.attn.qkv.weight'),
        (rf'{layer}\.0\.fn\.to_out\.(weight|bias)', rf'{block}.attn.proj.\2'),
        (rf'{layer}\.1\.norm\.(weight|bias)', rf'{block}.ffn_norm.\2'),
        (rf'{layer}\.1\.fn\.net\.0\.(weight|bias)', rf'{block}.ffn.fc1.\2'),
        (rf'{layer}\.1\.fn\.net\.2\.(weight|bias)', rf'{block}.ffn.fc2.\2'),
        (rf'{source}\.transformer\.norm\.(weight|bias)',
         rf'{target}.trunk.norm.\1'),
    ]


ENCODER_RULES = [
    (r'encoder\.to_patch_embedding\.0\.(weight|bias)',
     r'encoder.patch_embed.proj.\1'),
    *block_rules('encoder'),
    (r'pre_quant\.weight', 'encoder.proj_out.weight', linear_to_conv1x1),
    (r'pre_quant\.bias', 'encoder.proj_out.bias'),
]
QUANTIZER_RULES = [
    (r'quantizer\.embedding\.weight', 'quantizer.codebook'),
]
#: official keys no target needs (see the module docstring)
IGNORE_UNMAPPED = (r'loss\..+', )
#: vistok keys without a counterpart in the release
ALLOW_MISSING = (
    r'discriminator\..+',
    r'adversarial_loss\.lecam_ema_(real|fake)',
    r'ema\.num_updates',
)


def decoder_rules(patch_size: int) -> list:
    """The decoder's rules; the pixel head's bias depends on the patch
    size."""
    return [
        *block_rules('decoder'),
        (r'post_quant\.weight', 'decoder.embed.weight', linear_to_conv1x1),
        (r'post_quant\.bias', 'decoder.embed.bias'),
        (r'decoder\.to_pixel\.1\.weight', 'decoder.head.proj.weight',
         transpose_conv_to_pixel_head),
        (r'decoder\.to_pixel\.1\.bias', 'decoder.head.proj.bias',
         lambda bias: transpose_conv_bias_to_pixel_head(bias, patch_size)),
    ]


def _config_problems(model: nn.Module) -> list:
    """What the model's config says differently from the official layout
    (empty when it matches)."""
    encoder, decoder = model.encoder, model.decoder
    quantizer = getattr(model, 'quantizer', None)
    problems = []
    if not getattr(quantizer, 'l2_norm_output', False):
        problems.append('model.quantizer.use_l2_norm=True (normalised codes '
                        'out)')
    for name in ('quant_conv', 'post_quant_conv'):
        if not isinstance(getattr(model, name, None), nn.Identity):
            problems.append(f'model.use_{name}=False (the official Linear '
                            f'layers are encoder.proj_out / decoder.embed)')
    for side, part in (('encoder', encoder), ('decoder', decoder)):
        problems += vit_layout_problems(part, f'model.{side}')
    return problems


def vit_layout_problems(part: nn.Module, name: str,
                        pixel_range=OFFICIAL_PIXEL_RANGE) -> list:
    """What the vistok ViT backbone ``part`` (config key ``name``) sets
    differently from the blocks of ``layers.py`` with inputs / outputs in
    ``pixel_range`` (empty when it matches)."""
    problems = []
    block = part.trunk.blocks[0]
    if part.trunk.pos_embed.kind != 'sincos':
        problems.append(f"{name}.pos_embed='sincos'")
    if not isinstance(block.ffn.act, nn.Tanh):
        problems.append(f"{name}.mlp_act='tanh'")
    if part.trunk.norm.eps != OFFICIAL_NORM_EPS:
        problems.append(f'{name}.norm_eps={OFFICIAL_NORM_EPS}')
    if block.attn.head_dim != OFFICIAL_DIM_HEAD:
        problems.append(
            f'{name}.num_heads = embed_dim / {OFFICIAL_DIM_HEAD} '
            f'(got heads of width {block.attn.head_dim})')
    expected_affine = ((pixel_range[1] - pixel_range[0]) / 2,
                       sum(pixel_range) / 2)
    if (part.pixel_scale, part.pixel_shift) != expected_affine:
        problems.append(f'{name}.pixel_range={tuple(pixel_range)}')
    return problems


def check_layout(official: Mapping[str, torch.Tensor], model: nn.Module):
    """Refuse a checkpoint that is not ``ViTVQ``'s layout or a config that
    does not build the matching model; returns ``(the stored sin-cos keys to
    drop, a line describing the conversion)`` (the ``check`` of
    :func:`vistok.apis.convert.converter_main`).

    Raises:
        LayoutError: the model is not a ViT autoencoder, its config differs
            from the official layout (all differences are listed), or the
            checkpoint's position tables are missing or not the fixed
            sin-cos tables of the config's grid.
    """
    if not (isinstance(getattr(model, 'encoder', None), ViTEncoder)
            and isinstance(getattr(model, 'decoder', None), ViTDecoder)):
        raise LayoutError(f'the config must build an AutoencoderTokenizer '
                          f'with a ViTEncoder and a ViTDecoder, got a '
                          f'{type(model).__name__}')
    problems = _config_problems(model)
    if problems:
        raise LayoutError('the config does not build the enhancing-'
                          'transformers ViTVQ layout; set: ' +
                          '; '.join(problems))
    for side, key in POS_EMBED_KEYS.items():
        check_sincos_table(official, key, getattr(model, side), side,
                           'ViTVQ')
    grid = model.encoder.grid_size
    return tuple(POS_EMBED_KEYS.values()), (
        f'ViTVQ at {grid[0]}x{grid[1]} tokens, patch '
        f'{model.encoder.patch_size}; fixed sin-cos tables checked and '
        f'dropped')


def check_sincos_table(official: Mapping[str, torch.Tensor], key: str,
                       part: nn.Module, name: str, layout: str) -> None:
    """Refuse ``official`` unless ``official[key]`` is the fixed 2-D sin-cos
    table of the grid of the vistok ViT backbone ``part`` (``name`` in
    messages) within :data:`POS_EMBED_ATOL`; ``layout`` names the official
    model in messages."""
    dim = part.trunk.norm.normalized_shape[0]
    expected = sincos_pos_embed_2d(dim, part.grid_size)[None]
    if key not in official:
        raise LayoutError(f'{key} missing: not a {layout} checkpoint (its '
                          f'fixed position table is a parameter)')
    stored = official[key]
    if tuple(stored.shape) != tuple(expected.shape):
        raise LayoutError(
            f'{key} has shape {tuple(stored.shape)}, the config\'s '
            f'{name} expects {tuple(expected.shape)} (img_size / '
            f'patch_size / embed_dim)')
    error = (stored.float().cpu() - expected).abs().max().item()
    if error > POS_EMBED_ATOL:
        raise LayoutError(
            f'{key} is not the fixed 2-D sin-cos table (max deviation '
            f'{error:.3g}): a checkpoint of another layout')


def load_codebook(path: str, trust: bool = False) -> torch.Tensor:
    """The ``(K, D)`` table stored in ``path``: a tensor (SeiT's
    ``codebook.ckpt`` is ``torch.save(tensor)``) or a dict holding exactly
    one tensor; loaded safely unless ``trust``."""
    loaded = load_torch_checkpoint(path, trust)
    if isinstance(loaded, dict) and len(loaded) == 1:
        (loaded, ) = loaded.values()
    if not isinstance(loaded, torch.Tensor):
        raise LayoutError(f'--codebook {path} must hold one (K, D) tensor, '
                          f'got a {type(loaded).__name__}')
    return loaded


def replace_codebook(official: dict, codebook: torch.Tensor) -> None:
    """Put ``codebook`` ``(K, D)`` (e.g. SeiT's 391 x 32 ``codebook.ckpt``)
    in place of the checkpoint's ``quantizer.embedding.weight``; its code
    dim must be the checkpoint's."""
    key = 'quantizer.embedding.weight'
    if key not in official:
        raise LayoutError(f'{key} missing: not a ViTVQ checkpoint')
    if (not isinstance(codebook, torch.Tensor) or codebook.dim() != 2
            or codebook.shape[1] != official[key].shape[1]):
        shape = (tuple(codebook.shape) if isinstance(codebook, torch.Tensor)
                 else type(codebook).__name__)
        raise LayoutError(f'--codebook must hold a (K, '
                          f'{official[key].shape[1]}) tensor (the '
                          f'checkpoint\'s code dim), got {shape}')
    official[key] = codebook


def rules_for(model) -> list:
    """The rules for ``model`` (an AutoencoderTokenizer with ViT
    backbones); the rules of a part the model's EMA keeps also write to its
    copy (``ema.*``)."""
    parts = dict(encoder=ENCODER_RULES, quantizer=QUANTIZER_RULES,
                 decoder=decoder_rules(model.decoder.patch_size))
    return rules_with_ema_copies(parts, model)
