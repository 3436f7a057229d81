"""VAR's released transformers (``var_d16.pth``, ``var_d20.pth``,
``var_d24.pth``, ``var_d30.pth`` of ``FoundationVision/var`` on Hugging
Face; Tian et al. 2024, "Visual Autoregressive Modeling") -> vistok's
:class:`~vistok.models.generators.var.VARGenerator` (command line:
``tools/model_converters/var.py``).

A release is the plain state dict of ``VAR`` in FoundationVision/VAR
``models/var.py`` / ``models/basic_var.py`` (commit 78b9539), built by
``models/__init__.py`` ``build_vae_var`` with ``width = 64 · depth``,
``heads = depth``, MLP ratio 4, ``norm_eps = 1e-6``, ``attn_l2_norm=True``,
``shared_aln=False``, ``cond_drop_rate = 0.1``, ``drop_path_rate = 0.1 ·
depth / 24`` over the scales ``1 2 3 4 5 6 8 10 13 16`` of the VQVAE
``vae_ch160v4096z32.pth`` (4096 codes of 32 channels) — what
``VARGenerator(depth=d)`` builds by default. Parameters (without the VQVAE,
which ``VAR`` keeps outside its state dict): d16 310,283,520, d20
600,917,136, d24 1,033,399,360, d30 2,010,020,356 (the 310M / 600M / 1.0B /
2.0B of VAR's README). The 512-px ``var_d36.pth`` has ``shared_aln=True``
and the scales ``1 2 3 4 6 9 13 18 24 32``: set ``model.shared_aln``,
``model.patch_nums`` and ``model.quantizer.scales`` accordingly
(2,353,893,904 parameters).

Key mapping (one to one, same shapes; VAR's module names are kept by
:class:`VARGenerator` and :mod:`vistok.models.backbones.var_transformer`):

* ``class_emb.weight`` (``num_classes + 1`` rows, the last the dropped /
  unconditional class) -> ``class_emb.embedding.weight``;
* ``word_embed.*``, ``pos_start``, ``pos_1LC``, ``lvl_embed.weight``,
  ``head_nm.ada_lin.1.*``, ``head.*`` and, with ``shared_aln``,
  ``shared_ada_lin.1.*`` keep their names;
* per block ``blocks.{i}.``: ``attn.{mat_qkv.weight, q_bias, v_bias,
  scale_mul_1H11, proj.*}``, ``ffn.{fc1,fc2}.*``, ``ada_lin.1.*`` (or
  ``ada_gss`` with ``shared_aln``) keep their names.

Dropped on purpose (:data:`IGNORE_UNMAPPED`), after :func:`check_layout`
has checked that they are what vistok derives itself: the buffers
``lvl_1L`` (the scale of each position: vistok's ``level_ids``, so it
fixes the scales ``patch_nums``), ``attn_bias_for_masking`` (the
block-causal mask, vistok's :meth:`VARGenerator.attention_mask`) and
``blocks.{i}.attn.zero_k_bias`` (the zero key bias; vistok has none).
Nothing is left at its initial value.

The frozen multi-scale quantizer the generator decodes with is not in a
``var_d*.pth``: it comes from the converted VQVAE
(``tools/model_converters/var_vqvae.py``) through ``model.quantizer_weights``
(``tools/sample.py --tokenizer-checkpoint``).

The independent reference forward (teacher forcing and
``autoregressive_infer_cfg``) is
``tests/reference/var_transformer_official.py``.
"""
import math
from typing import Mapping, Optional, Tuple

import torch

from vistok.apis.converters import build_config_model
from vistok.models.generators.var import VARGenerator

RULES = [
    (r'class_emb\.weight', 'class_emb.embedding.weight'),
    (r'(word_embed\.(?:weight|bias)|pos_start|pos_1LC|lvl_embed\.weight)',
     r'\1'),
    (r'((?:head_nm\.ada_lin|shared_ada_lin)\.1\.(?:weight|bias))', r'\1'),
    (r'(head\.(?:weight|bias))', r'\1'),
    (r'(blocks\.\d+\.attn\.(?:mat_qkv\.weight|q_bias|v_bias|scale_mul_1H11'
     r'|proj\.weight|proj\.bias))', r'\1'),
    (r'(blocks\.\d+\.(?:ffn\.fc[12]\.(?:weight|bias)|ada_lin\.1\.'
     r'(?:weight|bias)|ada_gss))', r'\1'),
]
#: VAR's derived buffers (checked by :func:`check_layout`, then dropped)
IGNORE_UNMAPPED = (r'lvl_1L', r'attn_bias_for_masking',
                   r'blocks\.\d+\.attn\.zero_k_bias')
#: every VARGenerator tensor comes from the checkpoint
ALLOW_MISSING = ()


class LayoutError(ValueError):
    """The checkpoint is not a VAR transformer the configured model can
    take; the message names the config key to change."""


def rules_for(model) -> list:
    """The rules (the same for every ``VARGenerator``)."""
    return list(RULES)


def build_generator(config: str, cfg_options: Optional[dict] = None):
    """The ``VARGenerator`` of ``config`` (a file; ``cfg_options`` as
    ``--cfg-options``), built without reading any weights file (its frozen
    quantizer is filled later from ``model.quantizer_weights``)."""
    model = build_config_model(config, cfg_options)
    if not isinstance(model, VARGenerator):
        raise LayoutError(f'the config must build a VARGenerator (model.type'
                          f'), got a {type(model).__name__}')
    return model


def _blocks(official: Mapping[str, torch.Tensor]) -> int:
    ids = {int(k.split('.')[1]) for k in official if k.startswith('blocks.')}
    if ids != set(range(len(ids))):
        raise LayoutError(f'the checkpoint has blocks {sorted(ids)}, not '
                          f'0..{len(ids) - 1}')
    return len(ids)


def _patch_nums(levels: torch.Tensor) -> Tuple[int, ...]:
    """The scales ``s_k`` of VAR's ``lvl_1L`` (``s_k²`` positions of level
    ``k``, in order)."""
    levels = levels.flatten().long()
    counts = torch.bincount(levels).tolist()
    sides = tuple(math.isqrt(c) for c in counts)
    if any(s * s != c for s, c in zip(sides, counts)) or not torch.equal(
            levels, torch.repeat_interleave(torch.arange(len(counts)),
                                            torch.tensor(counts))):
        raise LayoutError(f'lvl_1L is not a sequence of square scales (level '
                          f'counts {counts})')
    return sides


def check_layout(official: Mapping[str, torch.Tensor],
                 model: VARGenerator) -> Tuple[tuple, str]:
    """Refuse a checkpoint ``model`` would compute another function with,
    naming the config key to change; return ``((), a line describing the
    release)`` (the ``check`` of :func:`vistok.apis.convert.converter_main`).

    Checked beyond the shapes the conversion compares: the number of
    blocks (``model.depth``), the heads (``scale_mul_1H11`` has one entry
    per head: ``model.num_heads``), ``attn_l2_norm`` and ``shared_aln``
    (which tensors exist), the scales (``lvl_1L``: ``model.patch_nums``),
    the block-causal mask (``attn_bias_for_masking``) and a zero
    ``zero_k_bias``.

    Raises:
        LayoutError: with the mismatch and the config key.
    """
    if not isinstance(model, VARGenerator) or model.num_branches != 1:
        raise LayoutError(f'the config must build a VARGenerator with one '
                          f'head (model.num_branches=1), got '
                          f'{type(model).__name__}')
    if 'class_emb.weight' not in official or 'blocks.0.attn.mat_qkv.weight' \
            not in official:
        raise LayoutError('not a VAR transformer state dict (no '
                          'class_emb.weight / blocks.0.attn.mat_qkv.weight)')
    depth = _blocks(official)
    if depth != len(model.blocks):
        raise LayoutError(f'the checkpoint has {depth} blocks (VAR-d{depth})'
                          f', the config builds {len(model.blocks)}: pass '
                          f'--cfg-options model.depth={depth}')
    attn = model.blocks[0].attn
    l2_norm = 'blocks.0.attn.scale_mul_1H11' in official
    if l2_norm != attn.attn_l2_norm:
        raise LayoutError(f'the checkpoint has attn_l2_norm={l2_norm} (blocks'
                          f'.0.attn.scale_mul_1H11), the config '
                          f'{attn.attn_l2_norm} (model.attn_l2_norm)')
    if l2_norm:
        heads = official['blocks.0.attn.scale_mul_1H11'].shape[1]
        if heads != attn.num_heads:
            raise LayoutError(f'the checkpoint has {heads} heads (blocks.0.'
                              f'attn.scale_mul_1H11), the config '
                              f'{attn.num_heads} (model.num_heads)')
    shared = 'blocks.0.ada_gss' in official
    if shared != model.blocks[0].shared_aln:
        raise LayoutError(f'the checkpoint has shared_aln={shared} (blocks.0.'
                          f'ada_gss), the config {model.blocks[0].shared_aln}'
                          f' (model.shared_aln)')
    if 'lvl_1L' in official:
        patch_nums = _patch_nums(official['lvl_1L'])
        if patch_nums != model.patch_nums:
            raise LayoutError(
                f'the checkpoint was trained on the scales {list(patch_nums)}'
                f' (lvl_1L), the config has {list(model.patch_nums)} '
                f'(model.patch_nums and model.quantizer.scales)')
    if 'attn_bias_for_masking' in official:
        bias = official['attn_bias_for_masking'].reshape(
            model.num_positions, model.num_positions)
        if not torch.equal(bias == 0, model.attention_mask().cpu()):
            raise LayoutError('attn_bias_for_masking is not the block-causal '
                              'mask of the scales (VARGenerator.'
                              'attention_mask)')
    for key, value in official.items():
        if key.endswith('attn.zero_k_bias') and value.abs().max() > 0:
            raise LayoutError(f'{key} is not zero: vistok\'s attention has '
                              f'no key bias')
    return (), (f'VAR-d{depth}: width {model.embed_dim}, '
                f'{attn.num_heads} heads, scales {list(model.patch_nums)}, '
                f'shared_aln={shared}, attn_l2_norm={l2_norm}')
