"""Tokenize images and decode tokens back to images, outside the Runner.

    model = load_tokenizer('configs/vqvae/<config>.py', 'iter_2000.pth')
    indices = tokenize(model, images)      # (B, 3, H, W) uint8 -> indices
    recon = detokenize(model, indices)     # indices -> (B, 3, H, W) uint8

``indices`` is whatever the model's quantizer produces (see
:mod:`vistok.models.quantizers`): a tensor ``(B, h, w)`` (VQ, LFQ, FSQ),
``(B, h, w, D)`` (residual, trailing depth axis), ``(B, h, w, P)`` (product,
trailing branch axis), a list of per-scale maps ``[(B, s_i, s_i)]``
(multi-scale) or a tuple ``(top, bottom)`` (hierarchical).
"""
import os.path as osp
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.config import Config

from vistok.models.utils.tokenizer_loading import (
    encode_images,
    prepare_tokenizer,
    tokenizer_inference,
)
from vistok.utils.checkpoint import (
    CheckpointLoadError,
    load_checkpoint_file,
    load_safetensors_file,
)

Indices = Union[torch.Tensor, Sequence[torch.Tensor]]


def map_indices(fn, indices: Indices) -> Indices:
    """Apply ``fn`` to every tensor of an indices structure (tensor, list or
    tuple of tensors), keeping the structure."""
    if torch.is_tensor(indices):
        return fn(indices)
    if isinstance(indices, (list, tuple)):
        return type(indices)(map_indices(fn, level) for level in indices)
    raise TypeError(f'indices must be a tensor or a list / tuple of tensors, '
                    f'got {type(indices).__name__}')


def load_weights(checkpoint: str) -> dict:
    """The model weights of ``checkpoint``: a vistok / mmengine checkpoint
    (loaded safely, see :func:`vistok.utils.checkpoint.load_checkpoint_file`;
    its ``state_dict`` is taken) or a ``.safetensors`` export."""
    if not osp.isfile(checkpoint):
        raise CheckpointLoadError(f'checkpoint {checkpoint} does not exist')
    if checkpoint.endswith('.safetensors'):
        return load_safetensors_file(checkpoint)
    loaded = load_checkpoint_file(checkpoint, map_location='cpu')
    state = loaded.get('state_dict', loaded) if isinstance(loaded,
                                                           dict) else None
    if not isinstance(state, dict):
        raise CheckpointLoadError(
            f'checkpoint {checkpoint} holds no state dict (expected a dict '
            f'of tensors or one under "state_dict")')
    return state


def load_tokenizer(config: Union[str, Config],
                   checkpoint: Optional[str] = None,
                   device: Union[str, torch.device] = 'cpu',
                   cfg_options: Optional[dict] = None) -> nn.Module:
    """Build ``config``'s model, load ``checkpoint`` strictly, move it to
    ``device`` and put it in eval mode (the models floor's
    :func:`~vistok.models.utils.tokenizer_loading.prepare_tokenizer`,
    which frozen tokenizers inside models use too).

    Args:
        config: config file path or :class:`mmengine.config.Config` (not
            modified: a copy gets the overrides).
        checkpoint: a training checkpoint (its ``state_dict``) or a
            ``.safetensors`` export; ``None`` keeps the random
            initialisation. Full-pickle checkpoints load only after
            :func:`vistok.utils.checkpoint.trust_pickled_checkpoints`.
        device: where the model runs.
        cfg_options: overrides, as ``--cfg-options`` (``{'model.x': 1}``).

    EMA: the state dict is loaded as it is, with the model's own EMA copy
    if it keeps one (:func:`tokenize` / :func:`detokenize` choose between
    the two); for the weights of mmengine's ``EMAHook``, export them with
    ``tools/model_converters/export_safetensors.py --ema`` and pass that
    file. Frozen networks kept as non-persistent buffers are not in
    checkpoints: those that encoding or decoding needs (e.g. the teacher
    that renders a TiTok stage-1 model's codes) are filled from their files
    by the model's ``init_inference_weights()``, when it has one, after
    the checkpoint; the others (e.g. an LPIPS trunk of the loss) are not
    loaded.
    """
    state = None if checkpoint is None else load_weights(checkpoint)
    model = prepare_tokenizer(config, state, cfg_options=cfg_options,
                              source=checkpoint)
    return model.to(device).eval()


def tokenize(model: nn.Module,
             images: Union[torch.Tensor, Sequence[torch.Tensor]],
             use_ema: Optional[bool] = None) -> Indices:
    """Token indices of ``images``.

    Args:
        model: a tokenizer with ``data_preprocessor`` and ``encode`` (e.g.
            :class:`vistok.models.tokenizers.AutoencoderTokenizer`).
        images: RGB pixels in ``[0, 255]``, ``uint8`` or float: a
            ``(B, 3, H, W)`` tensor or a list of ``(3, H, W)`` tensors of
            one size. The model's ``data_preprocessor`` normalises them
            (e.g. to ``[-1, 1]``) and moves them to the model's device.
        use_ema: encode with the model's EMA copy (``True``), its trained
            weights (``False``) or as its validation does (``None``:
            ``ema.use_for_val`` of a model with ``ema``).

    Returns:
        The quantizer's indices (see the module docstring), on the CPU.
    """
    shapes = ([tuple(images.shape[1:])] if torch.is_tensor(images) else
              [tuple(img.shape) for img in images])
    if (torch.is_tensor(images) and images.dim() != 4) or any(
            len(s) != 3 or s[0] != 3 for s in shapes):
        raise ValueError(f'images must be (B, 3, H, W) or a list of (3, H, W)'
                         f' tensors, got shapes {shapes[:4]}')
    indices = encode_images(model, images, use_ema)
    return map_indices(lambda t: t.cpu(), indices)


def detokenize(model: nn.Module, indices: Indices,
               use_ema: Optional[bool] = None) -> torch.Tensor:
    """Images ``(B, 3, H, W)`` ``uint8`` RGB (on the CPU) decoded from
    ``indices`` (the structure :func:`tokenize` returns): ``model.decode``,
    then ``model.to_pixels`` (undo the normalisation, clamp to
    ``[0, 255]``), rounded to the nearest integer. ``use_ema`` as in
    :func:`tokenize`."""
    device = next(model.parameters()).device
    with tokenizer_inference(model, use_ema):
        decoded = model.decode(map_indices(lambda t: t.to(device), indices))
        pixels = model.to_pixels(decoded)
    return pixels.round().to(torch.uint8).cpu()
