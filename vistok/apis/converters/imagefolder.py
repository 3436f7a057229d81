"""The ImageFolder tokenizers released by the authors (MSVR10P2-4096 /
-8192 / -16384, ``qiuk6/XQ-GAN`` on Hugging Face) -> vistok's
``ImageFolderTokenizer`` (``projects/ImageFolder``; command line:
``tools/model_converters/imagefolder.py``).

The releases are training checkpoints of ``VQModel`` in
lxa9867/ImageFolder ``tokenizer/tokenizer_image/xqgan_model.py`` (Li et al.,
ICLR 2025, "ImageFolder: Autoregressive Image Generation with Folded
Tokens") with ``enc_type = dec_type = 'dinov2'``, ``abs_pos_embed: true``,
``product_quant: 2``, ``half_sem: true`` (``configs/MSVR10P2-*.yaml``). The
layout below is read from that file, ``dino_enc/dinov2.py``
(``DINOv2Encoder`` / ``DINOv2Decoder``), ``dino_enc/to_pixel.py``
(``ToPixel``) and ``quant.py`` (``VectorQuantizer2``), commits 42fd2e7
and 76ddfb9 (same layout).

Key mapping (vistok: ``vistok/models/backbones/latent_grid_vit.py``,
``vistok/models/quantizers/{product,multiscale,vq}.py``):

* ``{encoder,decoder}.model.*`` (the timm ViTs) keep their names; the
  decoder's ``patch_embed.proj`` is deleted in ``DINOv2Decoder`` and is
  an Identity in vistok, so neither side has it;
* ``encoder.latent_tokens`` ``(1, P·K², width)`` ->
  ``encoder.latent_tokens`` ``(P·K², width)`` (branch ``p`` owns rows
  ``p·K² … (p+1)·K² - 1`` on both sides: ``DINOv2Encoder.forward`` views
  them as ``(B, P·K, K, width)`` and chunks the rows);
* ``{encoder,decoder}.lvl_embed.weight`` -> ``.level_embed.weight``
  (level 0 = image part, ``p + 1`` = branch ``p`` in the encoder, 1 = the
  latent grid with its class token in the decoder, on both sides);
* ``quant_conv`` (1x1 conv, width -> C, in ``VQModel``) ->
  ``encoder.quant_proj`` (linear);
* ``quantizes.{p}.embedding.weight`` (``VectorQuantizer2`` of branch ``p``)
  -> ``quantizer.branches.{p}.quantizer.codebook``;
* ``quantizes.{p}.quant_resi.qresi_ls.{k}.*`` (``PhiPartiallyShared``'s
  3x3 convs) -> ``quantizer.branches.{p}.phi_convs.{k}.*``;
* ``post_quant_conv`` (1x1 conv, P·C -> width) ->
  ``decoder.post_quant_proj`` (linear);
* ``decoder.mask_token`` ``(1, 1, width)`` -> ``(width, )``;
* ``decoder.to_pixel.model`` (``ToPixel('linear')``: a linear to
  ``p·p·3`` values unpatchified as ``'n h w p q c -> n c (h p) (w q)'``)
  -> ``decoder.head.proj`` (1x1 conv; :class:`PixelHead` has the same
  ``(p, q, c)`` channel order);
* every tensor of a part the config's EMA keeps is also copied to
  ``ema.*``.

Official keys dropped on purpose (:data:`IGNORE_UNMAPPED`):
``{encoder,decoder}.lvl1LC`` (the level-index buffers, recomputed by
vistok), ``quantizes.{p}.ema_vocab_hit_SV`` (codebook-usage statistics),
``semantic_model.*`` (the frozen DINOv2 teacher of the semantic loss:
vistok loads it from ``model.semantic_loss.teacher_weights_path``) and the
training-only extras ``VQModel`` builds with other options:
``detail_model.*`` (frozen CLIP teacher, ``detail_guide``) and
``sem_linear.*`` (built when ``half_sem`` is false; the dinov2 branch of
``VQModel.forward`` projects with ``quant_conv`` and never uses it).

vistok keys without a counterpart keep their initial values
(:data:`ALLOW_MISSING`): ``semantic_loss.*`` (its projector and teacher),
``discriminator.*`` and the LeCam statistics (the release's
discriminator is a separate entry of the training checkpoint, another
architecture), ``ema.num_updates``. Anything else unmapped or missing
stops the conversion with a report.

The converter reads the checkpoint's ``'model'`` entry (the raw weights).
The official VAR scripts (``train.py``, ``scripts/pretokenization.py``)
load ``'ema'`` instead when the file has one: pass ``--weights ema`` to the
script for those.
"""
from typing import Dict

import torch

from vistok.utils.checkpoint import CheckpointLoadError
from vistok.utils.convert import (
    TOKENIZER_TRAINING_STATE,
    load_torch_checkpoint,
    rules_with_ema_copies,
)

#: entries of an official training checkpoint (``xqgan_train.py`` saves
#: ``{'model', 'optimizer', 'discriminator', 'optimizer_disc', 'steps'}``
#: and ``'ema'`` with ``ema: true``) that hold tokenizer weights
WEIGHT_ENTRIES = ('model', 'ema')


class LayoutError(ValueError):
    """The checkpoint is not an ImageFolder layout the model can take."""


def conv1x1_to_linear(tensor):
    """1x1 conv weight ``(C_out, C_in, 1, 1)`` -> linear ``(C_out, C_in)``
    (other kernels keep their shape and are reported as mismatches)."""
    if tensor.dim() == 4 and tensor.shape[2:] == (1, 1):
        return tensor.flatten(1)
    return tensor


def linear_to_conv1x1(tensor):
    """Linear weight ``(C_out, C_in)`` -> 1x1 conv ``(C_out, C_in, 1, 1)``
    (other tensors keep their shape)."""
    return tensor[:, :, None, None] if tensor.dim() == 2 else tensor


def drop_batch_axes(tensor):
    """``(1, N, width)`` learned tokens -> ``(N, width)``; ``(1, 1, width)``
    -> ``(width, )``."""
    while tensor.dim() > 1 and tensor.shape[0] == 1:
        tensor = tensor[0]
    return tensor


ENCODER_RULES = [
    (r'encoder\.model\.(.+)', r'encoder.model.\1'),
    (r'encoder\.latent_tokens', 'encoder.latent_tokens', drop_batch_axes),
    (r'encoder\.lvl_embed\.weight', 'encoder.level_embed.weight'),
    (r'quant_conv\.weight', 'encoder.quant_proj.weight', conv1x1_to_linear),
    (r'quant_conv\.bias', 'encoder.quant_proj.bias'),
]
QUANTIZER_RULES = [
    (r'quantizes\.(\d+)\.embedding\.weight',
     r'quantizer.branches.\1.quantizer.codebook'),
    (r'quantizes\.(\d+)\.quant_resi\.qresi_ls\.(\d+)\.(weight|bias)',
     r'quantizer.branches.\1.phi_convs.\2.\3'),
]
DECODER_RULES = [
    (r'decoder\.model\.(.+)', r'decoder.model.\1'),
    (r'decoder\.mask_token', 'decoder.mask_token', drop_batch_axes),
    (r'decoder\.lvl_embed\.weight', 'decoder.level_embed.weight'),
    (r'post_quant_conv\.weight', 'decoder.post_quant_proj.weight',
     conv1x1_to_linear),
    (r'post_quant_conv\.bias', 'decoder.post_quant_proj.bias'),
    (r'decoder\.to_pixel\.model\.weight', 'decoder.head.proj.weight',
     linear_to_conv1x1),
    (r'decoder\.to_pixel\.model\.bias', 'decoder.head.proj.bias'),
]
#: official keys no target needs (see the module docstring)
IGNORE_UNMAPPED = (
    r'(encoder|decoder)\.lvl1LC',
    r'quantizes\.\d+\.ema_vocab_hit_SV',
    r'semantic_model\..+',
    r'detail_model\..+',
    r'sem_linear\..+',
)
#: vistok keys without a counterpart in the release
ALLOW_MISSING = (r'semantic_loss\..+', ) + TOKENIZER_TRAINING_STATE
#: official keys of layouts this converter does not take, with the reason
UNSUPPORTED = {
    'encoder.latent_pos_embed':
    'the checkpoint was trained with abs_pos_embed=False (learned latent '
    'position embeddings); vistok\'s DINOv2LatentEncoder implements the '
    'released abs_pos_embed=True layout only',
    'quantize.embedding.weight':
    'the checkpoint has a single quantizer (product_quant=1); the '
    'ImageFolder configs build a ProductQuantizer of 2 branches',
}


def load_entry(path: str, entry: str,
               trust: bool = False) -> Dict[str, torch.Tensor]:
    """The ``entry`` (:data:`WEIGHT_ENTRIES`) state dict of the official
    training checkpoint ``path`` (safe loading unless ``trust``).

    Raises:
        CheckpointLoadError: the file has no such entry.
    """
    if entry not in WEIGHT_ENTRIES:
        raise ValueError(f'entry must be one of {WEIGHT_ENTRIES}, got '
                         f'{entry!r}')
    loaded = load_torch_checkpoint(path, trust)
    if not isinstance(loaded, dict) or not isinstance(
            loaded.get(entry), dict):
        found = sorted(loaded) if isinstance(loaded, dict) else []
        raise CheckpointLoadError(
            f'checkpoint {path} has no {entry!r} state dict (entries: '
            f'{found}); --weights {entry} needs an official training '
            f'checkpoint')
    return loaded[entry]


def check_layout(official, model):
    """Refuse a checkpoint of another ``VQModel`` variant, or a model that
    is not an ImageFolder tokenizer, with the reason; returns ``((), a line
    describing the conversion)`` (the ``check`` of
    :func:`vistok.apis.convert.converter_main`).

    Raises:
        LayoutError: an ``abs_pos_embed=False`` or single-quantizer
            checkpoint, a branch count different from the model's, or a
            model without the ImageFolder parts.
    """
    for key, reason in UNSUPPORTED.items():
        if key in official:
            raise LayoutError(f'{key} in the checkpoint: {reason}')
    branches = getattr(getattr(model, 'quantizer', None), 'branches', None)
    if branches is None or not hasattr(model.encoder, 'latent_tokens'):
        raise LayoutError(f'the config must build an ImageFolderTokenizer '
                          f'(DINOv2LatentEncoder, ProductQuantizer), got a '
                          f'{type(model).__name__}')
    official_branches = sorted({
        int(key.split('.')[1])
        for key in official if key.startswith('quantizes.')
    })
    if official_branches != list(range(len(branches))):
        raise LayoutError(
            f'the checkpoint has quantizer branches {official_branches} '
            f'(quantizes.*), the config builds {len(branches)} '
            f'(model.quantizer.num_branches)')
    return (), f'{len(branches)} product-quantizer branches'


def rules_for(model) -> list:
    """The rules for ``model`` (an ImageFolderTokenizer); the rules of a
    part the model's EMA keeps also write to its copy (``ema.*``)."""
    parts = dict(encoder=ENCODER_RULES, quantizer=QUANTIZER_RULES,
                 decoder=DECODER_RULES)
    return rules_with_ema_copies(parts, model)
