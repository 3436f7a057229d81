"""Batches of EM volume samples (``PackEMInputs`` output) for 3-D models."""
from typing import Optional

import torch
from mmengine.model import BaseDataPreprocessor

from vistok.registry import MODELS


@MODELS.register_module()
class VolumeDataPreprocessor(BaseDataPreprocessor):
    """Stack EM samples into a float ``(B, C, D, H, W)`` batch.

    Input: mmengine's ``pseudo_collate`` of
    :class:`~vistok.datasets.em.transforms.PackEMInputs` samples, i.e.
    ``dict(inputs=[(C, D, H, W) tensors], data_samples=[DataSample])``, or an
    already stacked ``(B, C, D, H, W)`` tensor. Output: ``dict(inputs=(B, C,
    D, H, W) float tensor on the model's device, data_samples=list of
    DataSample on that device, or None)``. Values are kept as they are
    (raw is already in ``[0, 1]``). Whole-volume test samples of different
    shapes cannot be stacked: use ``batch_size=1`` for them.

    Args:
        dtype: floating dtype of the batch.
        non_blocking: as in ``mmengine``'s ``BaseDataPreprocessor``.
    """

    def __init__(self, dtype: torch.dtype = torch.float32,
                 non_blocking: bool = False):
        super().__init__(non_blocking=non_blocking)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if not dtype.is_floating_point:
            raise ValueError(f'dtype must be a floating dtype, got {dtype}')
        self.dtype = dtype

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        inputs = data['inputs']
        if not torch.is_tensor(inputs):
            shapes = {tuple(x.shape) for x in inputs}
            if len(shapes) != 1:
                raise ValueError(
                    f'VolumeDataPreprocessor cannot stack inputs of shapes '
                    f'{sorted(shapes)}; use batch_size=1 for whole volumes')
            inputs = torch.stack(list(inputs))
        if inputs.dim() != 5:
            raise ValueError(f'VolumeDataPreprocessor expects (C, D, H, W) '
                             f'samples, got a batch of shape '
                             f'{tuple(inputs.shape)}')
        data_samples: Optional[list] = data.get('data_samples')
        if data_samples is not None:
            data_samples = list(data_samples)
        return dict(inputs=inputs.to(self.dtype), data_samples=data_samples)
