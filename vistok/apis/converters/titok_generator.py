"""TiTok's released MaskGIT generators (``generator_titok_{s128,b64,l32}.bin``
of bytedance/1d-tokenizer; Yu et al. 2024, "An Image is Worth 32 Tokens for
Reconstruction and Generation") -> vistok's
:class:`~vistok.models.generators.maskgit.MaskGITGenerator` (command line:
``tools/model_converters/titok_generator.py``).

A release is the state dict of one of two classes of 1d-tokenizer
``modeling/maskgit.py`` (commit 942a96fbdd873780179d1b78d5462911528bf8c8),
sized by ``configs/infer/TiTok/titok_{s128,b64,l32}.yaml``:

* ``UViTBert`` (S-128: hidden 1024, 20 layers, 16 heads, MLP 4096, 128
  tokens) — ``arch='titok-uvit'`` (``norm_eps=1e-5``, LayerNorm's default);
* ``ImageBert`` (B-64 / L-32: hidden 768, 24 layers, 16 heads, MLP 3072,
  64 / 32 tokens), a Hugging Face ``BertModel`` — post-LN, a LayerNorm on
  the embeddings, no final norm, ``layer_norm_eps=1e-12``: vistok's
  ``arch='titok-imagebert'`` with ``norm_eps=1e-12`` (not ``'titok-bert'``,
  the pre-LN variant, which computes another function).

Both embed the class token in the token table: rows ``[0, V)`` are the
codes, ``V`` the mask token, ``V + 1 + c`` class ``c`` and ``V + 1 + C``
the dropped (null) class, ``V = vocab_size``, ``C = num_classes``. That
table is split into ``token_embed.weight`` (the first ``V + 1`` rows) and
``class_embed.embedding.weight`` (the last ``C + 1``; vistok's null class
is entry ``C``, the same row).

Key mapping, ``UViTBert`` (one to one but the split, same shapes):
``embeddings.weight`` -> the two tables; ``pos_embed``; per block ``{in_
blocks.i, mid_block, out_blocks.i}.``: ``norm1`` -> ``attn_norm``,
``attn.qkv.weight`` / ``attn.proj.*`` keep their names, ``norm2`` ->
``ffn_norm``, ``mlp.fc{1,2}.*`` -> ``ffn.fc{1,2}.*``, ``skip_linear.*``;
``norm.*``; ``lm_head.*`` -> ``head.*``.

``ImageBert`` (prefix ``model.``) after :func:`prepare_official`, which
fuses each layer's ``attention.self.{query,key,value}`` into one
``attention.self.qkv`` tensor (rows ``[q; k; v]``: vistok's fused
projection splits its output as ``(3, heads, head_dim)``, the same split
as BERT's three ``(heads, head_dim)`` projections) and folds
``embeddings.token_type_embeddings.weight[0]`` into every row of
``embeddings.position_embeddings.weight`` (``ImageBert`` never passes
``token_type_ids``, so BERT adds type 0 at every position; row 1 is never
used and is dropped): ``embeddings.word_embeddings.weight`` -> the two
tables; ``embeddings.position_embeddings.weight`` -> ``pos_embed``;
``embeddings.LayerNorm`` -> ``embed_norm``; per ``encoder.layer.i``:
``attention.self.qkv`` -> ``blocks.i.attn.qkv``, ``attention.output.dense``
-> ``attn.proj``, ``attention.output.LayerNorm`` -> ``attn_norm``,
``intermediate.dense`` -> ``ffn.fc1``, ``output.dense`` -> ``ffn.fc2``,
``output.LayerNorm`` -> ``ffn_norm``; ``lm_head`` -> ``head``. The buffers
``embeddings.position_ids`` / ``token_type_ids`` that older
``transformers`` versions saved are checked (``arange`` / zeros) and
dropped (:data:`IGNORE_UNMAPPED`). Nothing of the model keeps its initial
value (:data:`ALLOW_MISSING` is empty).

Not in a checkpoint, and so taken from the config: the number of heads
(16 in every release), dropout (training only; ``UViTBert``'s blocks have
none) and the sampler (``configs/infer/TiTok/*.yaml``: S-128 64 steps,
temperature 2.8, guidance 6.9 power-cosine; B-64 8 / 11.0 / 3.0 linear;
L-32 8 / 9.5 / 4.5 linear; TiTok's ``generate`` is ``sampling_mode='titok'``
with ``guidance_scale = 1 + s``).

The independent reference forward is
``tests/reference/titok_generator_official.py``.
"""
import re
from typing import Dict, Mapping, Optional, Tuple

import torch

from vistok.apis.converters import build_config_model
from vistok.models.generators.maskgit import MaskGITGenerator
from vistok.utils.convert import ConversionReport, convert_for_model

#: the two official classes
IMAGE_BERT, UVIT_BERT = 'ImageBert', 'UViTBert'
#: ``BertConfig(layer_norm_eps=1e-12)`` of ``ImageBert``; ``nn.LayerNorm``'s
#: default in ``UViTBert``
NORM_EPS = {IMAGE_BERT: 1e-12, UVIT_BERT: 1e-5}
#: the vistok preset of each official class
ARCH = {IMAGE_BERT: 'titok-imagebert', UVIT_BERT: 'titok-uvit'}
#: rows of the official token table besides the codes: the mask token and
#: the null class
EXTRA_TOKEN_ROWS = 2

_BERT = r'model\.encoder\.layer\.(\d+)\.'
_UVIT_BLOCK = r'(in_blocks\.\d+|mid_block|out_blocks\.\d+)\.'
#: the fused projection :func:`prepare_official` writes per BERT layer
FUSED_QKV = 'model.encoder.layer.{}.attention.self.qkv.{}'
#: buffers older ``transformers`` versions saved (checked, then dropped)
POSITION_IDS = 'model.embeddings.position_ids'
TOKEN_TYPE_IDS = 'model.embeddings.token_type_ids'
IGNORE_UNMAPPED = (re.escape(POSITION_IDS), re.escape(TOKEN_TYPE_IDS))
#: every MaskGITGenerator tensor comes from the checkpoint
ALLOW_MISSING = ()

UVIT_RULES = [
    (r'pos_embed', 'pos_embed'),
    (_UVIT_BLOCK + r'norm1\.(weight|bias)', r'\1.attn_norm.\2'),
    (_UVIT_BLOCK + r'norm2\.(weight|bias)', r'\1.ffn_norm.\2'),
    (_UVIT_BLOCK + r'attn\.(qkv\.weight|proj\.weight|proj\.bias)',
     r'\1.attn.\2'),
    (_UVIT_BLOCK + r'mlp\.(fc[12]\.(?:weight|bias))', r'\1.ffn.\2'),
    (r'(out_blocks\.\d+\.skip_linear\.(?:weight|bias))', r'\1'),
    (r'norm\.(weight|bias)', r'norm.\1'),
    (r'lm_head\.(weight|bias)', r'head.\1'),
]
BERT_RULES = [
    (r'model\.embeddings\.position_embeddings\.weight', 'pos_embed',
     lambda t: t[None]),
    (r'model\.embeddings\.LayerNorm\.(weight|bias)', r'embed_norm.\1'),
    (_BERT + r'attention\.self\.qkv\.(weight|bias)', r'blocks.\1.attn.qkv.\2'),
    (_BERT + r'attention\.output\.dense\.(weight|bias)',
     r'blocks.\1.attn.proj.\2'),
    (_BERT + r'attention\.output\.LayerNorm\.(weight|bias)',
     r'blocks.\1.attn_norm.\2'),
    (_BERT + r'intermediate\.dense\.(weight|bias)', r'blocks.\1.ffn.fc1.\2'),
    (_BERT + r'output\.dense\.(weight|bias)', r'blocks.\1.ffn.fc2.\2'),
    (_BERT + r'output\.LayerNorm\.(weight|bias)', r'blocks.\1.ffn_norm.\2'),
    (r'model\.lm_head\.(weight|bias)', r'head.\1'),
]
#: the token table (codes, mask, classes, null class) of each class
TOKEN_TABLE = {IMAGE_BERT: 'model.embeddings.word_embeddings.weight',
               UVIT_BERT: 'embeddings.weight'}
POSITIONS = {IMAGE_BERT: 'model.embeddings.position_embeddings.weight',
             UVIT_BERT: 'pos_embed'}
HEAD = {IMAGE_BERT: 'model.lm_head.weight', UVIT_BERT: 'lm_head.weight'}


class LayoutError(ValueError):
    """The checkpoint is not a TiTok generator the configured model can
    take; the message names the config key to change."""


def release_kind(official: Mapping[str, torch.Tensor]) -> str:
    """:data:`IMAGE_BERT` or :data:`UVIT_BERT`, from the keys."""
    if TOKEN_TABLE[IMAGE_BERT] in official:
        return IMAGE_BERT
    if TOKEN_TABLE[UVIT_BERT] in official and \
            'mid_block.norm1.weight' in official:
        return UVIT_BERT
    raise LayoutError(f'not a TiTok generator state dict (neither '
                      f'{TOKEN_TABLE[IMAGE_BERT]} (ImageBert) nor '
                      f'{TOKEN_TABLE[UVIT_BERT]} + mid_block.* (UViTBert))')


def _layer_ids(official: Mapping[str, torch.Tensor], pattern: str) -> int:
    """The number of layers ``i`` of keys matching ``pattern`` (group 1),
    which must be ``0 … n-1``."""
    ids = {int(m.group(1)) for m in map(re.compile(pattern).match, official)
           if m}
    if ids != set(range(len(ids))):
        raise LayoutError(f'the checkpoint has layers {sorted(ids)} of '
                          f'{pattern!r}, not 0..{len(ids) - 1}')
    return len(ids)


def check_layout(official: Mapping[str, torch.Tensor],
                 model: MaskGITGenerator) -> str:
    """Refuse a checkpoint ``model`` would compute another function with,
    naming the config key to change; return a line describing the
    release.

    Checked beyond the shapes the conversion compares: the class and its
    vistok layout (``model.arch``: post-LN BERT or U-ViT, no ``qkv`` bias
    in the U-ViT), the number of layers, the LayerNorm epsilon
    (``model.norm_eps``), ``vocab_size`` (the head's rows),
    ``num_classes`` (the token table's remaining rows), the sequence length
    (``model.token_shape``) and the width; no residual depths
    (``model.depth_vocab_size=None``). The heads are not in a checkpoint.

    Raises:
        LayoutError: with the mismatch and the config key.
    """
    if not isinstance(model, MaskGITGenerator):
        raise LayoutError(f'the config must build a MaskGITGenerator (model.'
                          f'type), got a {type(model).__name__}')
    if model.depth_vocab_size is not None:
        raise LayoutError('TiTok generators predict one token per position: '
                          'set model.depth_vocab_size=None')
    kind = release_kind(official)
    arch = f"model.arch='{ARCH[kind]}' (or an arch dict)"
    if kind == IMAGE_BERT:
        if not model.post_norm:
            raise LayoutError(f'an ImageBert (post-LN BERT) checkpoint needs '
                              f'post_norm=True: set {arch}')
        layers = _layer_ids(official, _BERT)
        built = len(model.blocks)
        norm = model.embed_norm
    else:
        if not model.long_skip:
            raise LayoutError(f'a UViTBert checkpoint needs a U-ViT '
                              f'(long_skip=True): set {arch}')
        layers = 2 * _layer_ids(official, r'in_blocks\.(\d+)\.')
        built = 2 * len(model.in_blocks)
        norm = model.norm
        if model.in_blocks[0].attn.qkv.bias is not None:
            raise LayoutError('UViTBert has no qkv bias: set qkv_bias=False '
                              'in model.arch')
    if layers != built:
        raise LayoutError(f'the checkpoint has {layers} layers '
                          f'(num_hidden_layers), the config {built}: set '
                          f'depth={layers} in model.arch')
    if norm.eps != NORM_EPS[kind]:
        raise LayoutError(f'{kind} normalises with eps {NORM_EPS[kind]:g}, '
                          f'the config with {norm.eps:g}: set model.norm_eps='
                          f'{NORM_EPS[kind]:g}')
    if HEAD[kind] not in official:
        raise LayoutError(f'{HEAD[kind]} missing: not a {kind} checkpoint')
    vocab = official[HEAD[kind]].shape[0]
    if vocab != model.vocab_size:
        raise LayoutError(f'the checkpoint predicts {vocab} codes '
                          f'({HEAD[kind]}), the config {model.vocab_size}: '
                          f'set model.vocab_size={vocab}')
    rows, dim = official[TOKEN_TABLE[kind]].shape
    classes = rows - vocab - EXTRA_TOKEN_ROWS
    if classes != model.class_embed.num_classes:
        raise LayoutError(f'the checkpoint has {classes} classes ('
                          f'{TOKEN_TABLE[kind]}: {rows} rows = {vocab} codes'
                          f' + mask + classes + null), the config '
                          f'{model.class_embed.num_classes}: set '
                          f'model.num_classes={classes}')
    if dim != model.pos_embed.shape[-1]:
        raise LayoutError(f'the checkpoint is {dim} wide ({TOKEN_TABLE[kind]}'
                          f'), the config {model.pos_embed.shape[-1]}: set '
                          f'dim={dim} in model.arch')
    if POSITIONS[kind] not in official:
        raise LayoutError(f'{POSITIONS[kind]} missing: not a {kind} '
                          f'checkpoint')
    tokens = official[POSITIONS[kind]].shape[-2] - 1
    if tokens != model.num_tokens:
        raise LayoutError(f'the checkpoint has {tokens} token positions '
                          f'({POSITIONS[kind]} without the class token), '
                          f'the config {model.num_tokens}: set '
                          f'model.token_shape=({tokens}, )')
    return (f'{kind}: {layers} layers, width {dim}, {vocab} codes, '
            f'{classes} classes, {tokens} tokens')


def prepare_official(official: Mapping[str, torch.Tensor]
                     ) -> Dict[str, torch.Tensor]:
    """A copy of ``official`` the rules map one to one: for an
    ``ImageBert``, each layer's ``query`` / ``key`` / ``value`` fused into
    :data:`FUSED_QKV` and ``token_type_embeddings.weight[0]`` added to the
    position table (see the module doc); a ``UViTBert`` unchanged.

    Raises:
        LayoutError: a projection or the token-type / position table is
            missing, or a saved ``position_ids`` / ``token_type_ids``
            buffer is not ``arange`` / zeros.
    """
    out = dict(official)
    if release_kind(official) != IMAGE_BERT:
        return out
    for i in range(_layer_ids(official, _BERT)):
        for kind in ('weight', 'bias'):
            names = [f'model.encoder.layer.{i}.attention.self.{p}.{kind}'
                     for p in ('query', 'key', 'value')]
            missing = [n for n in names if n not in out]
            if missing:
                raise LayoutError(f'{", ".join(missing)} missing: an '
                                  f'ImageBert layer has query, key and '
                                  f'value projections with biases')
            out[FUSED_QKV.format(i, kind)] = torch.cat(
                [out.pop(n) for n in names])
    types = 'model.embeddings.token_type_embeddings.weight'
    positions = POSITIONS[IMAGE_BERT]
    if types not in out or positions not in out:
        raise LayoutError(f'{types} or {positions} missing: an ImageBert '
                          f'checkpoint has both')
    out[positions] = out[positions] + out.pop(types)[0]
    count = out[positions].shape[0]
    if POSITION_IDS in out and not torch.equal(
            out[POSITION_IDS].flatten().long(), torch.arange(count)):
        raise LayoutError(f'{POSITION_IDS} is not arange({count})')
    if TOKEN_TYPE_IDS in out and out[TOKEN_TYPE_IDS].abs().max() > 0:
        raise LayoutError(f'{TOKEN_TYPE_IDS} is not zero')
    return out


def rules_for(model: MaskGITGenerator) -> list:
    """The rules for ``model`` (a post-LN BERT or a U-ViT
    ``MaskGITGenerator``): the class's rules and the split of the token
    table at row ``vocab_size + 1``."""
    rows = model.vocab_size + 1

    def split(table: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return table[:rows].clone(), table[rows:].clone()

    tables = ('token_embed.weight', 'class_embed.embedding.weight')
    if model.long_skip:
        return [(re.escape(TOKEN_TABLE[UVIT_BERT]), tables, split)
                ] + UVIT_RULES
    if model.post_norm:
        return [(re.escape(TOKEN_TABLE[IMAGE_BERT]), tables, split)
                ] + BERT_RULES
    raise LayoutError(f"no TiTok generator has vistok's pre-LN layout: set "
                      f"model.arch='{ARCH[IMAGE_BERT]}' (ImageBert) or "
                      f"'{ARCH[UVIT_BERT]}' (UViTBert)")


def convert_official(official: Mapping[str, torch.Tensor],
                     model: MaskGITGenerator,
                     source: str = 'official state dict'
                     ) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """:func:`check_layout`, :func:`prepare_official` and the rules:
    ``official`` converted and loaded strictly into ``model``; returns
    ``(state_dict, report)``.

    Raises:
        LayoutError: see :func:`check_layout` / :func:`prepare_official`.
        vistok.utils.convert.ConversionError: a key missing, unknown or of
            another shape.
    """
    check_layout(official, model)
    return convert_for_model(prepare_official(official), model,
                             rules_for(model), allow_missing=ALLOW_MISSING,
                             ignore_unmapped=IGNORE_UNMAPPED, source=source)


def build_generator(config: str, cfg_options: Optional[dict] = None
                    ) -> MaskGITGenerator:
    """The ``MaskGITGenerator`` of ``config`` (a file; ``cfg_options`` as
    ``--cfg-options``), built without reading any weights file."""
    model = build_config_model(config, cfg_options)
    if not isinstance(model, MaskGITGenerator):
        raise LayoutError(f'the config must build a MaskGITGenerator (model.'
                          f'type), got a {type(model).__name__}')
    return model
