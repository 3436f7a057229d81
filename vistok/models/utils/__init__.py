"""Utilities shared by the algorithms (mm's ``models/utils``): the EMA copy
of a model's parts, frozen pretrained networks, a tokenizer built from its
config and files (frozen or not) and images encoded with it, and one
optimizer step with rank-averaged gradients and the non-finite-loss
policy."""
from .ema import ModelEMA
from .frozen import (
    freeze_as_buffers,
    init_inference_weights,
    is_frozen,
    load_frozen_weights,
)
from .optimizer_step import NonFiniteGuard, NonFiniteLossError, update_params
from .tokenizer_loading import (
    encode_images,
    prepare_tokenizer,
    resolve_use_ema,
    tokenizer_inference,
)

__all__ = [
    'ModelEMA', 'NonFiniteGuard', 'NonFiniteLossError', 'encode_images',
    'freeze_as_buffers', 'init_inference_weights', 'is_frozen',
    'load_frozen_weights', 'prepare_tokenizer', 'resolve_use_ema',
    'tokenizer_inference', 'update_params'
]
