"""A tokenizer built from its config and filled from its files, and images
encoded with it: the one place for what ``vistok.apis.load_tokenizer`` /
``tokenize`` (outside the Runner), :class:`~vistok.models.classifiers.
LinearProbe` (a frozen tokenizer under a probe) and
:class:`~vistok.models.data_preprocessors.TokenEmbeddingPreprocessor`
(online tokenisation of image batches) need. It sits on the lowest model
floor so that model parts, which may not import ``vistok.apis``, use it
too.

    tokenizer = prepare_tokenizer('configs/vqvae/<config>.py',
                                  'iter_2000.pth', freeze=True,
                                  checkpoint_key='model.x.checkpoint')
    codes = encode_images(tokenizer, images)  # [0, 255] images -> indices

**Frozen** (``freeze=True``, :func:`~.frozen.freeze_as_buffers`): every
tensor is a non-persistent buffer (never trained, never in the owner's
checkpoints), the tokenizer stays in eval mode and its own
``init_weights`` (its loss networks' files) never runs; it is filled with
:func:`~.frozen.load_frozen_weights` (every tensor it has must be in the
checkpoint; extra entries, e.g. a discriminator's, are ignored). An
unfrozen tokenizer is filled strictly (``load_state_dict(strict=True)``).

**EMA**: the checkpoint is loaded as it is, with the tokenizer's own EMA
copy when it keeps one (``model.ema``); which weights encode is chosen at
encoding time (:func:`resolve_use_ema`: ``True`` the EMA copy, ``False``
the trained weights, ``None`` as the tokenizer validates, i.e. its EMA
copy when it keeps one with ``ema.use_for_val``).
"""
import contextlib
import copy
import os.path as osp
from typing import Iterator, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.utils import import_modules_from_strings

from vistok.registry import MODELS
from vistok.utils.checkpoint import CheckpointLoadError
from vistok.utils.weights import MissingWeightsError, load_state_dict_file
from .frozen import freeze_as_buffers, is_frozen, load_frozen_weights

#: how to obtain a tokenizer checkpoint, for :class:`MissingWeightsError`
TOKENIZER_HOW_TO_GET = (
    'Set it to a checkpoint of the tokenizer that the config builds: a '
    'training checkpoint (.pth, its state_dict is used) or a .safetensors '
    'export of it. Every tensor of the tokenizer must be in it.')
#: the name of an in-memory config in messages
IN_MEMORY = '<in-memory config>'

ConfigLike = Union[str, Config, dict, nn.Module]
StateLike = Union[str, Mapping[str, torch.Tensor]]


def _build(config: ConfigLike, cfg_options: Optional[dict],
           config_key: str) -> Tuple[nn.Module, str]:
    """The tokenizer of ``config`` and the config's name for messages."""
    if cfg_options and not isinstance(config, (str, Config)):
        raise ValueError(f'cfg_options override a config file or Config, '
                         f'but {config_key} is a '
                         f'{type(config).__name__}')
    if isinstance(config, nn.Module):
        return config, IN_MEMORY
    if isinstance(config, str):
        if not osp.isfile(config):
            raise FileNotFoundError(
                f'tokenizer config {config!r} does not exist (config key '
                f'`{config_key}`)')
        config = Config.fromfile(config)
    elif isinstance(config, Config):
        config = copy.deepcopy(config)  # the caller's stays as it is
    elif isinstance(config, dict):  # the model config itself
        return MODELS.build(config), IN_MEMORY
    else:
        raise TypeError(f'{config_key} must be a config file, a Config, a '
                        f'model config dict or a tokenizer module, got '
                        f'{type(config).__name__}')
    if cfg_options:
        config.merge_from_dict(cfg_options)
    if config.get('custom_imports'):
        import_modules_from_strings(**config.custom_imports)
    name = config.filename or IN_MEMORY
    if config.get('model') is None:
        raise KeyError(f'{config_key}: config {name} has no model')
    return MODELS.build(config.model), name


def _state_of(checkpoint: StateLike, checkpoint_key: Optional[str],
              how_to_get: str) -> Tuple[Mapping[str, torch.Tensor], str]:
    """The state dict of ``checkpoint`` (loaded safely when it is a path)
    and its name for messages."""
    if isinstance(checkpoint, Mapping):
        return checkpoint, 'state dict'
    state = load_state_dict_file(checkpoint, checkpoint_key or 'checkpoint',
                                 how_to_get)
    if not isinstance(state, Mapping):
        raise CheckpointLoadError(
            f'checkpoint {checkpoint} holds no state dict (expected a dict '
            f'of tensors, or one under "state_dict" or "model")')
    return state, checkpoint


def _own_inference_files(tokenizer: nn.Module,
                         model_key: Optional[str]) -> None:
    """The tokenizer's ``init_inference_weights()`` (frozen parts its
    checkpoints do not hold, e.g. TiTok's teacher); its errors name their
    keys as the model's (``model.x``), renamed ``<model_key>.x``."""
    own_files = getattr(tokenizer, 'init_inference_weights', None)
    if not callable(own_files):
        return
    try:
        own_files()
    except MissingWeightsError as err:
        if model_key is None:
            raise
        key = (err.key[len('model.'):]
               if err.key.startswith('model.') else err.key)
        raise MissingWeightsError(err.path, f'{model_key}.{key}',
                                  err.how_to_get) from None


def prepare_tokenizer(config: ConfigLike,
                      checkpoint: Optional[StateLike] = None,
                      *,
                      freeze: bool = False,
                      cfg_options: Optional[dict] = None,
                      checkpoint_key: Optional[str] = None,
                      how_to_get: str = TOKENIZER_HOW_TO_GET,
                      config_key: str = 'config',
                      model_key: Optional[str] = None,
                      source: Optional[str] = None) -> nn.Module:
    """Build a tokenizer from its config, (freeze it,) fill it from
    ``checkpoint``, then fill the frozen parts its checkpoints do not hold
    through its own ``init_inference_weights()``.

    Args:
        config: a config file (its ``custom_imports`` are imported and its
            ``model`` built), a :class:`~mmengine.config.Config` (likewise;
            not modified), a model config dict (built as it is), or a
            tokenizer module (taken as it is, e.g. one built and frozen by
            a constructor, which reads no files, and filled later).
        checkpoint: a training checkpoint (its ``state_dict`` / ``model``
            is used) or ``.safetensors`` export, loaded safely
            (:func:`vistok.utils.weights.load_state_dict_file`), or a state
            dict loaded by the caller. ``None``: the initialisation is kept,
            unless ``checkpoint_key`` makes it required.
        freeze: freeze the tokenizer (see the module docstring) before
            filling it; a tokenizer frozen before is filled as frozen too.
        cfg_options: overrides of a config file / Config, as
            ``--cfg-options`` (``{'model.x': 1}``).
        checkpoint_key: the config key that sets ``checkpoint`` (e.g.
            ``model.tokenizer_checkpoint``): when given, the checkpoint is
            required and an unset or missing file raises
            :class:`MissingWeightsError` naming it with ``how_to_get``.
        how_to_get: how the user obtains the checkpoint.
        config_key: the config key / argument that sets ``config``, named
            in errors about it.
        model_key: where the tokenizer's model config sits in the owner's
            config (e.g. ``model.tokenizer``): the tokenizer's own files
            name their keys ``model.x``, reported as ``<model_key>.x``.
            ``None``: as they are (the config is the tokenizer's own).
        source: the checkpoint's name in errors (default: its path, or
            ``'state dict'``).

    Returns:
        The tokenizer, where it was built (the CPU), in the mode it was
        built in (eval mode for good when frozen).

    Raises:
        FileNotFoundError: ``config`` is a path that does not exist.
        TypeError: the config builds no tokenizer (no ``encode()``).
        MissingWeightsError: a required checkpoint or a file of the
            tokenizer's own is unset or missing.
        KeyError / ValueError: (frozen) a tensor of the tokenizer is
            missing from the checkpoint or has another shape.
        CheckpointLoadError: (not frozen) the checkpoint does not fit the
            tokenizer, or holds no state dict.
    """
    tokenizer, config_name = _build(config, cfg_options, config_key)
    if not callable(getattr(tokenizer, 'encode', None)):
        raise TypeError(f'{config_key} must build a tokenizer with '
                        f'encode(), got {type(tokenizer).__name__}')
    if freeze and not is_frozen(tokenizer):
        tokenizer.is_init = True  # its weights come from the checkpoint
        freeze_as_buffers(tokenizer)
    if checkpoint is not None or checkpoint_key is not None:
        state, name = _state_of(checkpoint, checkpoint_key, how_to_get)
        name = source or name
        if is_frozen(tokenizer):
            load_frozen_weights(tokenizer, state, name)
        else:
            try:
                tokenizer.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise CheckpointLoadError(
                    f'checkpoint {name} does not fit the model of config '
                    f'{config_name}: {err}') from None
    _own_inference_files(tokenizer, model_key)
    return tokenizer


def resolve_use_ema(tokenizer: nn.Module, use_ema: Optional[bool],
                    key: str = 'use_ema') -> bool:
    """Whether to encode with ``tokenizer``'s EMA copy: ``use_ema`` when
    given, else as its validation does (the EMA copy when it keeps one,
    ``model.ema``, with ``ema.use_for_val``). ``use_ema=True`` for a
    tokenizer without an EMA copy raises a ``ValueError`` naming ``key``."""
    has_ema = getattr(tokenizer, 'ema', None) is not None
    if use_ema and not has_ema:
        raise ValueError(f'{key}=True, but the {type(tokenizer).__name__} '
                         f'keeps no EMA copy (its config key ema)')
    if use_ema is None:
        return has_ema and bool(getattr(tokenizer, 'ema_for_val', True))
    return bool(use_ema)


@contextlib.contextmanager
def tokenizer_inference(tokenizer: nn.Module,
                        use_ema: Optional[bool] = None,
                        key: str = 'use_ema') -> Iterator[None]:
    """Eval mode, no autograd and the weights :func:`resolve_use_ema`
    chooses inside the block; the tokenizer's previous mode afterwards."""
    use_ema = resolve_use_ema(tokenizer, use_ema, key)
    was_training = tokenizer.training
    tokenizer.eval()
    try:
        with torch.no_grad(), (tokenizer.ema_weights() if use_ema else
                               contextlib.nullcontext()):
            yield
    finally:
        tokenizer.train(was_training)


def encode_images(tokenizer: nn.Module,
                  images: Union[torch.Tensor, Sequence[torch.Tensor]],
                  use_ema: Optional[bool] = None,
                  key: str = 'use_ema'):
    """Token indices of ``images`` (RGB in ``[0, 255]``, ``uint8`` or
    float; a ``(B, C, H, W)`` tensor or a list of ``(C, H, W)`` tensors of
    one size): the tokenizer's ``data_preprocessor`` (normalisation, to its
    device), then ``encode``, inside :func:`tokenizer_inference`. Returns
    what ``encode`` returns, on the tokenizer's device."""
    with tokenizer_inference(tokenizer, use_ema, key):
        data = tokenizer.data_preprocessor(dict(inputs=images),
                                           training=False)
        return tokenizer.encode(data['inputs'])
