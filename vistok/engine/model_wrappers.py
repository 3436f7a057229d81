"""Distributed wrapper for algorithms that synchronise their own gradients."""
import torch.nn as nn
from mmengine.model import BaseModel

from vistok.registry import MODEL_WRAPPERS
from vistok.utils.dist import broadcast_from_rank0_


@MODEL_WRAPPERS.register_module()
class GradientSyncWrapper(nn.Module):
    """Runs ``module`` on every rank without ``DistributedDataParallel``.

    For algorithms whose ``train_step`` alternates several optimizers (a
    generator and a discriminator) and averages gradients itself with
    :func:`vistok.models.utils.optimizer_step.update_params` — one DDP forward
    cannot serve two backward passes through different parameter sets.
    The wrapper makes every rank start from rank 0's weights and buffers and
    forwards the Runner's calls. Such models declare
    ``syncs_gradients = True``; :class:`~vistok.engine.runner.VistokRunner`
    then picks this wrapper.

    Args:
        module: the algorithm (a ``BaseModel`` with its own ``train_step``).
    """

    def __init__(self, module: BaseModel):
        super().__init__()
        self.module = module
        for tensor in list(module.parameters()) + list(module.buffers()):
            broadcast_from_rank0_(tensor.data)

    def train_step(self, data, optim_wrapper):
        return self.module.train_step(data, optim_wrapper)

    def val_step(self, data):
        return self.module.val_step(data)

    def test_step(self, data):
        return self.module.test_step(data)
