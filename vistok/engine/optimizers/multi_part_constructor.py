"""One optimizer per part of a model (generator / discriminator), as
mmagic's G/D recipes, for models whose generator is not one submodule."""
import copy

import torch.nn as nn
from mmengine.model import is_model_wrapper
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapperDict

from vistok.registry import OPTIM_WRAPPER_CONSTRUCTORS


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class MultiPartOptimWrapperConstructor:
    """Build an ``OptimWrapperDict`` with one optimizer wrapper per part.

    ``optim_wrapper = dict(constructor='MultiPartOptimWrapperConstructor',
    generator=dict(optimizer=..., clip_grad=...), discriminator=dict(...))``:
    every key is a part the model names in ``optim_parts()`` (a dict
    ``name -> nn.Module``; e.g. the tokenizer's generator is its encoder,
    quantizer, decoder and 1×1 convs together). A part's wrapper config may
    carry its own ``paramwise_cfg``. Schedules go per part in
    ``param_scheduler = dict(generator=[...], discriminator=[...])``.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg=None):
        if not isinstance(optim_wrapper_cfg, dict):
            raise TypeError('optim_wrapper must be a dict of per-part '
                            f'wrapper configs, got {type(optim_wrapper_cfg)}')
        if paramwise_cfg is not None:
            raise ValueError('MultiPartOptimWrapperConstructor: give '
                             'paramwise_cfg inside each part\'s wrapper '
                             'config')
        self.optim_wrapper_cfg = copy.deepcopy(optim_wrapper_cfg)

    def __call__(self, model: nn.Module) -> OptimWrapperDict:
        if is_model_wrapper(model):
            model = model.module
        if not hasattr(model, 'optim_parts'):
            raise TypeError(f'{type(model).__name__} has no optim_parts(): '
                            f'it cannot be trained with '
                            f'MultiPartOptimWrapperConstructor')
        parts = model.optim_parts()
        unknown = sorted(set(self.optim_wrapper_cfg) - set(parts))
        missing = sorted(set(parts) - set(self.optim_wrapper_cfg))
        if unknown or missing:
            raise KeyError(f'optim_wrapper keys must be the parts of '
                           f'{type(model).__name__}: {sorted(parts)}; '
                           f'unknown {unknown}, missing {missing}')
        wrappers = {}
        for name, cfg in self.optim_wrapper_cfg.items():
            cfg = copy.deepcopy(cfg)
            paramwise = cfg.pop('paramwise_cfg', None)
            wrappers[name] = DefaultOptimWrapperConstructor(cfg, paramwise)(
                parts[name])
        return OptimWrapperDict(**wrappers)
