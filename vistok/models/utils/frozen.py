"""Frozen pretrained networks inside trainable models.

A frozen network (LPIPS' VGG trunk, a ConvNeXt for a perceptual loss, the
DINO ViT of a feature discriminator, an Inception for FID) is built at
construction with random weights and filled from a local file in
``init_weights()``. Its tensors are turned into *non-persistent buffers*:

* they are not parameters, so no optimizer, gradient clipping, EMA copy or
  parameter count sees them, and gradients still flow *through* them;
* they are not in the state dict, so checkpoints and exported weights stay
  the size of the trainable model and loading never asks for them;
* ``.to()`` / ``.cuda()`` move them with the model.
"""
import types
from typing import Dict

import torch
import torch.nn as nn
from mmengine.model import is_model_wrapper


def freeze_as_buffers(module: nn.Module) -> nn.Module:
    """Turn every parameter and buffer of ``module`` into a non-persistent
    buffer (in place) and put it in eval mode for good (``train()`` is a
    no-op afterwards, so BatchNorm / dropout stay in inference mode)."""
    derived = set()  # buffers the network computes itself (not in files)
    for prefix, sub in module.named_modules():
        derived.update(f'{prefix}.{name}' if prefix else name
                       for name in sub._non_persistent_buffers_set)
        for name, param in list(sub.named_parameters(recurse=False)):
            del sub._parameters[name]
            sub.register_buffer(name, param.detach(), persistent=False)
        for name in list(sub._buffers):
            sub._non_persistent_buffers_set.add(name)
    module._frozen_derived_buffers = derived
    module.eval()
    module.train = types.MethodType(_stay_in_eval, module)
    return module


def is_frozen(module: nn.Module) -> bool:
    """Whether :func:`freeze_as_buffers` froze ``module`` (freezing it again
    would take its tensors for derived buffers)."""
    return hasattr(module, '_frozen_derived_buffers')


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a frozen network: it stays in eval mode."""
    return self


@torch.no_grad()
def load_frozen_weights(module: nn.Module, state_dict: Dict[str,
                                                            torch.Tensor],
                        source: str) -> None:
    """Copy ``state_dict`` into a module frozen by :func:`freeze_as_buffers`.

    Every tensor of ``module`` must be present with the same shape, except
    the buffers the network derives itself (non-persistent before freezing,
    e.g. Swin's relative position index); extra entries of ``state_dict``
    are allowed (e.g. a classifier's head that the frozen trunk does not
    use). ``source`` (the file) is named in errors.
    """
    derived = getattr(module, '_frozen_derived_buffers', set())
    own = {name: tensor for name, tensor in module.named_buffers()
           if name not in derived}
    missing = sorted(set(own) - set(state_dict))
    if missing:
        raise KeyError(f'{source} lacks {len(missing)} tensors of '
                       f'{type(module).__name__}, e.g. {missing[:5]}')
    for name, tensor in own.items():
        value = state_dict[name]
        if value.shape != tensor.shape:
            raise ValueError(f'{source}: {name} has shape '
                             f'{tuple(value.shape)}, expected '
                             f'{tuple(tensor.shape)}')
        tensor.copy_(value)


def init_inference_weights(model: nn.Module) -> None:
    """Fill the frozen parts ``model`` (or the model inside a wrapper) needs
    at inference from their files, through its ``init_inference_weights()``
    if it has one: checkpoints do not hold frozen parts (non-persistent
    buffers), so a model loaded from a checkpoint for testing or
    tokenizing calls this first."""
    if is_model_wrapper(model):
        model = model.module
    if callable(getattr(model, 'init_inference_weights', None)):
        model.init_inference_weights()
