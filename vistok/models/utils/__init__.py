"""Utilities shared by the algorithms (mm's ``models/utils``): the EMA copy
of a model's parts, frozen pretrained networks, and one optimizer step with
rank-averaged gradients and the non-finite-loss policy."""
from .ema import ModelEMA
from .frozen import (
    freeze_as_buffers,
    init_inference_weights,
    load_frozen_weights,
)
from .optimizer_step import NonFiniteGuard, NonFiniteLossError, update_params

__all__ = [
    'ModelEMA', 'NonFiniteGuard', 'NonFiniteLossError', 'freeze_as_buffers',
    'init_inference_weights', 'load_frozen_weights', 'update_params'
]
