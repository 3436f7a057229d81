"""Optimizer state keyed by parameter name, for sharded checkpoints.

``torch.optim.Optimizer.state_dict()`` keys the state by the position of a
parameter in the optimizer, which says nothing about its shape on another
number of ranks; DCP needs names to re-shard. ``torch.distributed.
checkpoint.state_dict.get_optimizer_state_dict`` gives names but first
runs a zero-gradient step on an optimizer without state (e.g. a
discriminator's, before adversarial training starts), which would change
the run (its Adam step count) merely by saving it. These two functions map
positions to the model's parameter names and back, and nothing else.
"""
from typing import Dict, Iterator, Tuple

import torch
import torch.nn as nn

from vistok.utils.checkpoint import CheckpointLoadError
from vistok.utils.dcp import (
    SHARDED,
    load_sharded,
    merge_tensors,
    sharded_keys,
    split_tensors,
)


def _names(model: nn.Module) -> Dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def _params(optimizer: torch.optim.Optimizer
            ) -> Iterator[Tuple[int, torch.nn.Parameter]]:
    index = 0
    for group in optimizer.param_groups:
        for p in group['params']:
            yield index, p
            index += 1


def optimizer_state_by_name(model: nn.Module,
                            optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer``'s state dict with parameter names (``model``'s
    ``named_parameters``) in place of positions; its tensors are the live
    state (``DTensor`` shards under FSDP)."""
    names = _names(model)
    unknown = [i for i, p in _params(optimizer) if id(p) not in names]
    if unknown:
        raise ValueError(f'the optimizer steps parameters that are not the '
                         f'model\'s (positions {unknown[:5]})')
    state = {names[id(p)]: dict(optimizer.state[p])
             for _, p in _params(optimizer) if p in optimizer.state}
    groups = [{**{k: v for k, v in group.items() if k != 'params'},
               'params': [names[id(p)] for p in group['params']]}
              for group in optimizer.param_groups]
    return dict(state=state, param_groups=groups)


def load_optimizer_state_by_name(model: nn.Module,
                                 optimizer: torch.optim.Optimizer,
                                 skeleton: dict, path: str,
                                 prefix: str) -> None:
    """Load into ``optimizer`` the state saved by name: ``skeleton`` (the
    non-tensor part, from :func:`optimizer_state_by_name` through
    :func:`vistok.utils.dcp.split_tensors`) and its tensors under
    ``prefix`` in the sharded checkpoint ``path``, re-sharded to this
    run's parameters."""
    names = _names(model)
    groups = skeleton['param_groups']
    current = [[names.get(id(p)) for p in group['params']]
               for group in optimizer.param_groups]
    saved = [list(group['params']) for group in groups]
    if saved != current:
        raise CheckpointLoadError(
            f'{path}: the optimizer ({prefix}) was saved for other '
            f'parameter groups ({[len(g) for g in saved]} parameters per '
            f'group) than this run\'s ({[len(g) for g in current]})')
    entries = sharded_keys(path, prefix + '.state.')
    by_name = {names[id(p)]: p for _, p in _params(optimizer)}
    targets = {}
    for name, values in skeleton['state'].items():
        param = by_name[name]
        for key, value in values.items():
            if not (isinstance(value, str) and value == SHARDED):
                continue
            full = f'{prefix}.state.{name}.{key}'
            if full not in entries:
                raise CheckpointLoadError(f'{path} lacks {full}')
            size = tuple(entries[full].size)
            dtype = entries[full].properties.dtype
            targets[full] = (torch.zeros_like(param, dtype=dtype)
                             if size == tuple(param.shape) else
                             torch.zeros(size, dtype=dtype))
    load_sharded(path, targets)
    loaded = merge_tensors(skeleton, targets, prefix)
    positions = {names[id(p)]: i for i, p in _params(optimizer)}
    optimizer.load_state_dict(dict(
        state={positions[name]: value
               for name, value in loaded['state'].items()},
        param_groups=[{**group, 'params': [positions[n] for n in
                                           group['params']]}
                      for group in loaded['param_groups']]))


def split_optimizer_state(model, optimizer, prefix: str):
    """``(skeleton, tensors)`` of ``optimizer``'s state by name, its
    tensors keyed under ``prefix`` for the sharded checkpoint."""
    return split_tensors(optimizer_state_by_name(model, optimizer), prefix)
