"""The released TokenAdapt weights (``tokenadapt.ckpt``; SeiT++, Lee et al.,
ECCV 2024, arXiv 2312.10105) -> :class:`~.token_adapt.TokenAdapt` (command
line: ``projects/SeiTpp/tools/convert_tokenadapt.py``; the independent
reference forward is ``tests/reference/tokenadapt_official.py``).

Layout read from naver-ai/tokenadapt at commit 4e7a3be (``models.py``,
``layers.py``) and naver-ai/seit at commit 39b7a4a (``models_mtm.py``, the
same modules; ``layers.py``, the same up to formatting), CC BY-NC, facts
only. The file is naver-ai/seit's ``weights/tokenadapt.ckpt`` (the default
``--tokenadapt-path`` of ``main_mtm_pretrain.py`` /
``main_mtm_finetune.py``). TokenAdapt is two attributes of the classifier
(``TokenVisionTransformer``; the MTM models of ``models_mtm.py``):

* ``conversion_function`` (f) = ``Sequential(Linear(D, dim),
  ViTDecoder(image_size=s·32, patch_size=s, dim, depth, heads, mlp_dim,
  channels=D))``, fed the ``(B, h·w, D)`` tokens of the embedding map
  (``forward_conversion`` flattens ``BCHW -> BNC``);
* ``reverse_transform`` (g) = ``Sequential(ViTEncoder(image_size=s·28, ...,
  channels=D), Linear(dim, K))``, whose ``(B, h'·w', K)`` output is
  arg-maxed per token (``forward_inversion``).

``layers.py`` is enhancing-transformers' (the ViT-VQGAN's, see
:mod:`vistok.apis.converters.vitvqgan`) but for its sin-cos tables, computed
in float32 (they differ from vistok's by < 2e-6). The training scripts
load the file with ``model.load_state_dict(torch.load(path),
strict=False)`` into the classifier, so the keys sit at the top level; here
they may also sit beside classifier keys or under ``'model'`` /
``'state_dict'``. The released file itself was not available to check.

Key mapping (the ViT rules are the ViT-VQGAN converter's: the same blocks):

* ``conversion_function.0`` (Linear) -> ``f.embed`` (1x1 conv);
* ``conversion_function.1.transformer.*`` -> ``f.trunk.*``
  (:func:`~vistok.apis.converters.vitvqgan.block_rules`);
* ``conversion_function.1.to_pixel.1`` (``ConvTranspose2d(dim, D, s,
  stride=s)``) -> ``f.head.proj`` (PixelHead's 1x1 conv, weight reordered,
  bias repeated per pixel offset);
* ``reverse_transform.0.to_patch_embedding.0`` -> ``g.patch_embed.proj``;
* ``reverse_transform.0.transformer.*`` -> ``g.trunk.*``;
* ``reverse_transform.1`` (Linear) -> ``g.proj_out`` (1x1 conv).

Dropped after :func:`check_layout` has checked them: the fixed sin-cos
tables ``conversion_function.1.de_pos_embedding`` and
``reverse_transform.0.en_pos_embedding`` (vistok recomputes them), and every
key outside ``conversion_function.*`` / ``reverse_transform.*`` (the
classifier's; counted in the printed note). The output is a plain state
dict of ``f.*`` / ``g.*``: what
:class:`~vistok.models.data_preprocessors.TokenEmbeddingPreprocessor`'s
``token_adapt_checkpoint`` loads.
"""
import copy
import functools
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.utils import import_modules_from_strings

from vistok.apis.converters.imagefolder import linear_to_conv1x1
from vistok.apis.converters.vitvqgan import (
    LayoutError,
    block_rules,
    check_sincos_table,
    transpose_conv_bias_to_pixel_head,
    transpose_conv_to_pixel_head,
    vit_layout_problems,
)
from vistok.models.backbones import ViTDecoder, ViTEncoder
from vistok.registry import MODELS
from vistok.utils.convert import ConversionReport, convert_for_model

#: the official module names of f and g (``TokenVisionTransformer``)
F_NAME, G_NAME = 'conversion_function', 'reverse_transform'
OFFICIAL_PREFIXES = (F_NAME + '.', G_NAME + '.')
#: the fixed sin-cos tables, stored because they are ``nn.Parameter``\ s
POS_EMBED_KEYS = dict(f=f'{F_NAME}.1.de_pos_embedding',
                      g=f'{G_NAME}.0.en_pos_embedding')
#: the official f and g see code vectors, not pixels: no input / output map
#: (vistok's own range)
NO_PIXEL_AFFINE = (-1.0, 1.0)
#: where a TokenAdapt config sits in a vistok config, in search order: the
#: model itself, a SeiT++ classifier's preprocessor, a TokenAdaptTrainer
CONFIG_PLACES = ('model', 'model.data_preprocessor.token_adapt',
                 'model.token_adapt')
#: keys listed in messages
LIST_LIMIT = 8


def _layer_keys(prefix: str, depth: int) -> List[str]:
    """Official keys of a ``layers.py`` ``Transformer`` at ``prefix``."""
    keys = []
    for i in range(depth):
        layer = f'{prefix}.transformer.layers.{i}'
        keys += [f'{layer}.0.norm.weight', f'{layer}.0.norm.bias',
                 f'{layer}.0.fn.to_qkv.weight', f'{layer}.0.fn.to_out.weight',
                 f'{layer}.0.fn.to_out.bias', f'{layer}.1.norm.weight',
                 f'{layer}.1.norm.bias']
        keys += [f'{layer}.1.fn.net.{j}.{p}' for j in (0, 2)
                 for p in ('weight', 'bias')]
    return keys + [f'{prefix}.transformer.norm.weight',
                   f'{prefix}.transformer.norm.bias']


def official_keys(model: nn.Module) -> List[str]:
    """Every key of the official layout for ``model``'s depths (what the
    classifier's state dict holds under ``conversion_function`` /
    ``reverse_transform``)."""
    f_depth, g_depth = len(model.f.trunk.blocks), len(model.g.trunk.blocks)
    return [
        f'{F_NAME}.0.weight', f'{F_NAME}.0.bias', POS_EMBED_KEYS['f'],
        *_layer_keys(f'{F_NAME}.1', f_depth),
        f'{F_NAME}.1.to_pixel.1.weight', f'{F_NAME}.1.to_pixel.1.bias',
        f'{G_NAME}.0.to_patch_embedding.0.weight',
        f'{G_NAME}.0.to_patch_embedding.0.bias', POS_EMBED_KEYS['g'],
        *_layer_keys(f'{G_NAME}.0', g_depth), f'{G_NAME}.1.weight',
        f'{G_NAME}.1.bias'
    ]


def rules_for(model: nn.Module) -> list:
    """The rules onto ``model`` (a :class:`TokenAdapt`; the pixel head's
    bias depends on f's patch size)."""
    patch = model.f.patch_size
    return [
        (rf'{F_NAME}\.0\.weight', 'f.embed.weight', linear_to_conv1x1),
        (rf'{F_NAME}\.0\.bias', 'f.embed.bias'),
        *block_rules(f'{F_NAME}.1', 'f'),
        (rf'{F_NAME}\.1\.to_pixel\.1\.weight', 'f.head.proj.weight',
         transpose_conv_to_pixel_head),
        (rf'{F_NAME}\.1\.to_pixel\.1\.bias', 'f.head.proj.bias',
         functools.partial(transpose_conv_bias_to_pixel_head,
                           patch_size=patch)),
        (rf'{G_NAME}\.0\.to_patch_embedding\.0\.(weight|bias)',
         r'g.patch_embed.proj.\1'),
        *block_rules(f'{G_NAME}.0', 'g'),
        (rf'{G_NAME}\.1\.weight', 'g.proj_out.weight', linear_to_conv1x1),
        (rf'{G_NAME}\.1\.bias', 'g.proj_out.bias'),
    ]


def _listing(keys: Sequence[str]) -> str:
    shown = ', '.join(keys[:LIST_LIMIT])
    more = len(keys) - LIST_LIMIT
    return shown + (f' and {more} more' if more > 0 else '')


def _config_problems(model: nn.Module) -> List[str]:
    """What ``model``'s config sets differently from the released layout
    (empty when it matches); TokenAdapt's ``vit`` holds the block options
    of both f and g."""
    problems: List[str] = []
    for part in (model.f, model.g):
        found = vit_layout_problems(part, 'model.vit', NO_PIXEL_AFFINE)
        if part.trunk.blocks[0].attn.qkv.bias is not None:
            found.append('model.vit.qkv_bias=False')
        for problem in found:  # num_heads is TokenAdapt's own argument
            problem = problem.replace('model.vit.num_heads',
                                      'model.num_heads')
            if problem not in problems:
                problems.append(problem)
    return problems


def check_layout(official: Mapping[str, torch.Tensor],
                 model: nn.Module) -> Tuple[Tuple[str, ...], str]:
    """Refuse a checkpoint that is not the released TokenAdapt layout or a
    config that does not build the matching :class:`TokenAdapt`; returns
    ``(patterns of the official keys to drop, a line describing the
    conversion)`` (the ``check`` of
    :func:`vistok.apis.convert.converter_main`).

    Raises:
        LayoutError: the model is not a TokenAdapt of vistok ViTs, its
            config differs from the released layout (all differences
            listed), the checkpoint has no TokenAdapt tensors, lacks some
            (all named) or has some the config has no place for (another
            depth), or its position tables are not the fixed sin-cos tables
            of the config's grids.
    """
    if not (isinstance(getattr(model, 'f', None), ViTDecoder)
            and isinstance(getattr(model, 'g', None), ViTEncoder)):
        raise LayoutError(f'the config must build a TokenAdapt (f a '
                          f'ViTDecoder, g a ViTEncoder), got a '
                          f'{type(model).__name__}')
    problems = _config_problems(model)
    if problems:
        raise LayoutError('the config does not build the released '
                          'TokenAdapt layout; set: ' + '; '.join(problems))
    present = [k for k in official if k.startswith(OFFICIAL_PREFIXES)]
    if not present:
        raise LayoutError(
            f'not a TokenAdapt checkpoint: none of its {len(official)} keys '
            f'starts with {" or ".join(OFFICIAL_PREFIXES)} (found '
            f'{_listing(sorted(official))})')
    expected = official_keys(model)
    missing = [k for k in expected if k not in official]
    if missing:
        raise LayoutError(
            f'the checkpoint lacks {len(missing)} TokenAdapt tensors: '
            f'{_listing(missing)} (an incomplete file, or another depth '
            f'than model.depth={len(model.f.trunk.blocks)})')
    extra = sorted(set(present) - set(expected))
    if extra:
        raise LayoutError(
            f'the checkpoint has {len(extra)} TokenAdapt tensors the '
            f'config\'s TokenAdapt has no place for: {_listing(extra)} '
            f'(another depth than model.depth={len(model.f.trunk.blocks)}?)')
    for side, key in POS_EMBED_KEYS.items():
        check_sincos_table(official, key, getattr(model, side),
                           f'model.{side}', 'TokenAdapt')
    foreign = sorted(set(official) - set(present))
    ignore = tuple(re.escape(k) for k in (*POS_EMBED_KEYS.values(),
                                          *foreign))
    f_grid, g_grid = model.f.grid_size, model.g.grid_size
    note = (f'TokenAdapt f on {f_grid[0]}x{f_grid[1]} tokens, g on '
            f'{g_grid[0]}x{g_grid[1]} tokens, {model.num_codes} codes of '
            f'dimension {model.code_dim}; fixed sin-cos tables checked and '
            f'dropped')
    if foreign:
        note += (f'; {len(foreign)} non-TokenAdapt keys ignored (the '
                 f'classifier\'s: {_listing(foreign)})')
    return ignore, note


def convert_official(official: Mapping[str, torch.Tensor], model: nn.Module,
                     source: str = 'official state dict'
                     ) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """:func:`check_layout`, then the conversion into ``model`` (loaded
    strictly into it); returns ``(state_dict of f.* / g.*, report)``."""
    ignore, _ = check_layout(official, model)
    return convert_for_model(official, model, rules_for(model),
                             ignore_unmapped=ignore, source=source)


def token_adapt_config(cfg: Config) -> dict:
    """The TokenAdapt config of a vistok config: the first of
    :data:`CONFIG_PLACES` that holds a dict (the model of a TokenAdapt
    config, ``model.data_preprocessor.token_adapt`` of a SeiT++ classifier,
    ``model.token_adapt`` of a TokenAdaptTrainer)."""
    root = cfg.to_dict()
    for place in CONFIG_PLACES:
        value = root
        for name in place.split('.'):
            value = value.get(name) if isinstance(value, dict) else None
        if place == 'model':
            if isinstance(value, dict) and str(value.get(
                    'type', '')).split('.')[-1] == 'TokenAdapt':
                return value
        elif isinstance(value, dict):
            return value
    raise LayoutError(f'config {cfg.filename or "<in-memory>"} has no '
                      f'TokenAdapt: looked for a dict at '
                      f'{", ".join(CONFIG_PLACES)} (a SeiT config without '
                      f'TokenAdapt has model.data_preprocessor.token_adapt'
                      f'=None)')


def build_token_adapt(config: Union[str, Config],
                      cfg_options: Optional[dict] = None) -> nn.Module:
    """Build the :class:`TokenAdapt` of ``config`` (a path or a Config; see
    :func:`token_adapt_config`) with ``cfg_options`` applied to the config
    first; in eval mode, random weights."""
    cfg = (Config.fromfile(config) if isinstance(config, str) else
           copy.deepcopy(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    return MODELS.build(token_adapt_config(cfg)).eval()
