"""The TiTok checkpoints released by the authors -> vistok's TiTokTokenizer
(command line: ``tools/model_converters/titok.py``).

The releases are state dicts of TiTok's ``modeling/titok.py`` ``TiTok`` (Yu
et al. 2024, "An Image is Worth 32 Tokens for Reconstruction and
Generation"; bytedance/1d-tokenizer). The two-stage models after stage 2
hold the encoder, the l2-normalised VQ, the decoder with the proxy-logit
``ffn`` and the fine-tuned MaskGIT-VQGAN codebook and decoder
(``pixel_quantize.*``, ``pixel_decoder.*``); the single-stage VQ-8k
releases (``is_legacy: False``) have a pixel decoder instead.

Key mapping (TiTok ``modeling/titok.py``, ``modeling/modules/blocks.py``;
vistok ``vistok/models/backbones/latent_vit.py``):

* ``latent_tokens`` -> ``encoder.latent_tokens``;
* ``encoder.patch_embed.*`` -> ``encoder.patch_embed.proj.*``;
* ``{encoder,decoder}.class_embedding`` ``(1, width)`` and
  ``decoder.mask_token`` ``(1, 1, width)`` -> ``(width, )``;
* position embeddings, ``ln_pre``, ``ln_post`` keep their names (both
  codebases keep the class slot: ``(1 + h·w, width)``);
* ``{encoder,decoder}.transformer.{i}`` (``ResidualAttentionBlock`` with
  ``nn.MultiheadAttention``) -> ``.blocks.{i}``: ``ln_1`` -> ``attn_norm``,
  ``attn.in_proj_{weight,bias}`` -> ``attn.qkv.*`` (both stack q, k, v and
  split heads alike), ``attn.out_proj`` -> ``attn.proj``, ``ln_2`` ->
  ``ffn_norm``, ``mlp.c_fc`` / ``mlp.c_proj`` -> ``ffn.fc1`` / ``ffn.fc2``;
* ``encoder.conv_out`` (1x1 conv) -> ``encoder.proj_out`` (linear);
* ``quantize.embedding.weight`` -> ``quantizer.codebook``;
* ``decoder.decoder_embed`` -> ``decoder.embed``;
* legacy decoder (``is_legacy=True``): ``decoder.ffn.{0,2}`` (1x1 convs,
  tanh between) -> ``head.mlp.{0,2}`` (linears of the ``'proxy'`` head);
  single-stage decoder: ``decoder.ffn.0`` (1x1 conv to ``p·p·3``, then
  ``b (p1 p2 c) h w -> b c (h p1) (w p2)``) -> ``head.proj`` and
  ``decoder.conv_out`` (3x3 conv) -> ``head.refine`` of the ``'pixel'``
  head;
* ``pixel_quantize.embedding.weight`` -> ``pixel_codebook.weight``;
* ``pixel_decoder.*``: the MaskGIT-VQGAN decoder rules of
  :mod:`vistok.apis.converters.maskgit_vqgan` under the ``pixel_`` prefix;
* every tensor of a part the config's EMA keeps is also copied to
  ``ema.*``.

``quantize.embed_prob`` (usage statistics of TiTok's optional
``clustering_vq``, training only) is dropped. The release has no
discriminator: ``discriminator.*``, the LeCam statistics and
``ema.num_updates`` keep their initial values. Anything else unmapped or
missing stops the conversion with a report.

Latent layout (TiTok issue #17): the released two-stage checkpoints come
from an encoder that reshapes its ``(B, K, width)`` latent-token outputs to
``(B, width, K, 1)`` without a permute before ``conv_out``; they only work
with ``model.is_legacy=True``. :func:`check_layout` refuses them for an
``is_legacy=False`` model unless ``allow_non_legacy`` (e.g. to fine-tune
the weights into the fixed layout), and refuses a single-stage
(non-legacy) checkpoint for an ``is_legacy=True`` model.
"""
import re

from vistok.utils.convert import (
    TOKENIZER_TRAINING_STATE,
    rules_with_ema_copies,
)
from .maskgit_vqgan import RULES as MASKGIT_VQGAN_RULES


def flatten_to_vector(tensor):
    """``(1, width)`` / ``(1, 1, width)`` learned tokens -> ``(width, )``."""
    return tensor.reshape(-1)


def conv1x1_to_linear(tensor):
    """1x1 conv weight ``(C_out, C_in, 1, 1)`` -> linear ``(C_out, C_in)``
    (other kernels keep their shape and are reported as mismatches)."""
    if tensor.dim() == 4 and tensor.shape[2:] == (1, 1):
        return tensor.flatten(1)
    return tensor


#: what TiTok's encoder and decoder share, with ``{part}`` for either:
#: ResidualAttentionBlock -> TransformerBlock, learned tokens, LayerNorms
SHARED_RULES = [
    (r'{part}\.transformer\.(\d+)\.ln_1\.(weight|bias)',
     r'{part}.blocks.\1.attn_norm.\2'),
    (r'{part}\.transformer\.(\d+)\.attn\.in_proj_(weight|bias)',
     r'{part}.blocks.\1.attn.qkv.\2'),
    (r'{part}\.transformer\.(\d+)\.attn\.out_proj\.(weight|bias)',
     r'{part}.blocks.\1.attn.proj.\2'),
    (r'{part}\.transformer\.(\d+)\.ln_2\.(weight|bias)',
     r'{part}.blocks.\1.ffn_norm.\2'),
    (r'{part}\.transformer\.(\d+)\.mlp\.c_fc\.(weight|bias)',
     r'{part}.blocks.\1.ffn.fc1.\2'),
    (r'{part}\.transformer\.(\d+)\.mlp\.c_proj\.(weight|bias)',
     r'{part}.blocks.\1.ffn.fc2.\2'),
    (r'{part}\.class_embedding', r'{part}.class_embedding',
     flatten_to_vector),
    (r'{part}\.(positional_embedding|latent_token_positional_embedding)',
     r'{part}.\1'),
    (r'{part}\.(ln_pre|ln_post)\.(weight|bias)', r'{part}.\1.\2'),
]


def shared_rules(part: str) -> list:
    """:data:`SHARED_RULES` for ``part`` (``'encoder'`` / ``'decoder'``)."""
    return [(pattern.replace('{part}', part), target.replace('{part}', part),
             *transform) for pattern, target, *transform in SHARED_RULES]


ENCODER_RULES = shared_rules('encoder') + [
    (r'latent_tokens', 'encoder.latent_tokens'),
    (r'encoder\.patch_embed\.(weight|bias)', r'encoder.patch_embed.proj.\1'),
    (r'encoder\.conv_out\.weight', 'encoder.proj_out.weight',
     conv1x1_to_linear),
    (r'encoder\.conv_out\.bias', 'encoder.proj_out.bias'),
]
QUANTIZER_RULES = [(r'quantize\.embedding\.weight', 'quantizer.codebook')]
DECODER_RULES = shared_rules('decoder') + [
    (r'decoder\.mask_token', 'decoder.mask_token', flatten_to_vector),
    (r'decoder\.decoder_embed\.(weight|bias)', r'decoder.embed.\1'),
]
#: legacy decoder ``ffn`` (proxy logits) -> the ``'proxy'`` head
PROXY_HEAD_RULES = [
    (r'decoder\.ffn\.(0|2)\.weight', r'head.mlp.\1.weight',
     conv1x1_to_linear),
    (r'decoder\.ffn\.(0|2)\.bias', r'head.mlp.\1.bias'),
]
#: single-stage decoder ``ffn`` + ``conv_out`` -> the ``'pixel'`` head
PIXEL_HEAD_RULES = [
    (r'decoder\.ffn\.0\.(weight|bias)', r'head.proj.\1'),
    (r'decoder\.conv_out\.(weight|bias)', r'head.refine.\1'),
]
PIXEL_CODEBOOK_RULES = [
    (r'pixel_quantize\.embedding\.weight', 'pixel_codebook.weight')
]
#: the MaskGIT-VQGAN rules (:mod:`.maskgit_vqgan`), restricted to the
#: decoder, with a ``pixel_`` prefix on both sides
PIXEL_DECODER_RULES = [
    ('pixel_' + pattern.replace('(encoder|decoder)', '(decoder)').replace(
        '(?:encoder|decoder)', '(?:decoder)'), 'pixel_' + target)
    for pattern, target in MASKGIT_VQGAN_RULES if 'decoder' in pattern
]
#: official keys no target needs
IGNORE_UNMAPPED = (r'quantize\.embed_prob', )
#: official keys dropped for a stage-1 target (``--stage 1``)
STAGE2_KEYS = (r'pixel_quantize\..+', r'pixel_decoder\..+')
#: vistok keys without a counterpart in the release
ALLOW_MISSING = TOKENIZER_TRAINING_STATE

ISSUE_17 = (
    'TiTok issue #17: the released two-stage checkpoints were trained with '
    'an encoder that reshapes its (B, K, width) latent-token outputs to '
    '(B, width, K, 1) without a permute before the 1x1 conv_out, so they '
    'only reconstruct images with that layout (model.is_legacy=True)')


class LayoutError(ValueError):
    """The checkpoint's latent layout, decoder head or stage does not fit
    the target model."""


def official_head(official) -> str:
    """``'proxy'`` for a legacy two-stage checkpoint (``decoder.ffn`` to
    proxy-code logits, ``decoder.conv_out`` an Identity), ``'pixel'`` for a
    single-stage one (``decoder.conv_out`` a 3x3 conv on pixels)."""
    if 'decoder.conv_out.weight' in official:
        return 'pixel'
    if 'decoder.ffn.2.weight' in official:
        return 'proxy'
    raise LayoutError('not a TiTok checkpoint: it has neither '
                      'decoder.ffn.2.weight (legacy proxy-logit decoder) nor '
                      'decoder.conv_out.weight (single-stage pixel decoder)')


def check_layout(official, model, stage=None, allow_non_legacy=False) -> int:
    """Check that ``official`` fits ``model`` (a TiTokTokenizer); return
    the model's stage (2 with a ``pixel_decoder``, else 1).

    Raises:
        LayoutError: a legacy checkpoint for an ``is_legacy=False`` model
            (unless ``allow_non_legacy``) or the reverse, a decoder head of
            another kind, ``stage`` not that of the model, or the release's
            pixel parts for a stage-1 model without ``stage=1``.
    """
    for attr in ('is_legacy', 'head_type', 'pixel_decoder'):
        if not hasattr(model, attr):
            raise LayoutError(f'the config must build a TiTokTokenizer, got '
                              f'a {type(model).__name__}')
    head = official_head(official)
    if head == 'proxy' and not model.is_legacy and not allow_non_legacy:
        raise LayoutError(
            f'{ISSUE_17}; the config has model.is_legacy=False. Set it to '
            f'True, or pass --allow-non-legacy to convert anyway (the '
            f'weights then need fine-tuning to the fixed layout)')
    if head == 'pixel' and model.is_legacy:
        raise LayoutError(
            'the checkpoint has the single-stage pixel decoder '
            '(decoder.conv_out), trained with the fixed latent layout; set '
            'model.is_legacy=False (see ' + ISSUE_17 + ')')
    if head != model.head_type:
        raise LayoutError(f"the checkpoint's decoder has a {head!r} head, "
                          f"the config builds head={model.head_type!r}")
    model_stage = 1 if model.pixel_decoder is None else 2
    if stage is not None and stage != model_stage:
        raise LayoutError(f'--stage {stage}, but the config builds a '
                          f'stage-{model_stage} model (model.pixel_decoder '
                          f'is {"set" if model_stage == 2 else "None"})')
    has_pixel_parts = any(
        re.fullmatch(p, k) for k in official for p in STAGE2_KEYS)
    if model_stage == 1 and has_pixel_parts and stage != 1:
        raise LayoutError(
            'the checkpoint has the stage-2 pixel decoder (pixel_quantize.*, '
            'pixel_decoder.*) but the model has no model.pixel_decoder: '
            'pass --stage 1 to drop them, or use a stage-2 config')
    return model_stage


def rules_for(model) -> list:
    """The rules for ``model`` (its head kind and pixel parts); the rules of
    a part the model's EMA keeps also write to its copy (``ema.*``)."""
    parts = dict(encoder=ENCODER_RULES, quantizer=QUANTIZER_RULES,
                 decoder=DECODER_RULES,
                 head=(PIXEL_HEAD_RULES if model.head_type == 'pixel' else
                       PROXY_HEAD_RULES))
    if model.pixel_decoder is not None:
        parts.update(pixel_codebook=PIXEL_CODEBOOK_RULES,
                     pixel_decoder=PIXEL_DECODER_RULES)
    return rules_with_ema_copies(parts, model)


#: the value range the released encoders see (and pixel heads produce)
RELEASE_PIXEL_RANGE = (0.0, 1.0)


def check_release(official, model, stage=None, allow_non_legacy=False):
    """:func:`check_layout` and the input range; returns ``(official keys
    to drop, a line describing the conversion)``: a stage-1 target drops
    the release's pixel parts."""
    stage = check_layout(official, model, stage, allow_non_legacy)
    if model.pixel_range != RELEASE_PIXEL_RANGE:
        raise LayoutError(
            f'the released TiTok weights see images in '
            f'{list(RELEASE_PIXEL_RANGE)}; the model has pixel_range='
            f'{model.pixel_range}: set model.pixel_range=(0.0, 1.0) (as the '
            f'configs/titok configs do) or the converted weights '
            f'reconstruct badly')
    note = (f'{official_head(official)} decoder head, model.is_legacy='
            f'{model.is_legacy}, stage {stage}')
    return (STAGE2_KEYS if stage == 1 else ()), note
