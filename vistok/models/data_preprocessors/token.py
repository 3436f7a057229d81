"""Batches of stored tokens (``TokenShardDataset`` samples) for generators."""
from typing import Optional, Sequence, Union

import torch
from mmengine.model import BaseDataPreprocessor

from vistok.registry import MODELS

Tokens = Union[torch.Tensor, Sequence[torch.Tensor]]


@MODELS.register_module()
class TokenDataPreprocessor(BaseDataPreprocessor):
    """Collate token samples into ``dict(inputs=tokens, data_samples=labels)``.

    Input: mmengine's ``pseudo_collate`` of samples ``dict(indices=...,
    gt_label=..., ...)``, i.e. ``dict(indices=[per-sample indices],
    gt_label=[...])``, or an already batched dict. ``tokens`` keeps the
    quantizer's structure: a ``(B, *grid)`` int64 tensor, or a list / tuple
    of them (one per scale / level). ``labels`` is a ``(B,)`` int64 tensor of
    class ids, or ``None`` when the samples carry no ``gt_label``.
    """

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        indices = data['indices']
        if torch.is_tensor(indices):
            tokens = indices.long()
        elif torch.is_tensor(indices[0]):  # a list of per-sample tensors
            tokens = torch.stack(list(indices)).long()
        else:  # per-sample lists of levels -> per-level batches
            levels = [torch.stack(level).long() for level in zip(*indices)]
            tokens = type(indices[0])(levels)
        labels: Optional[torch.Tensor] = None
        if data.get('gt_label') is not None:
            labels = torch.as_tensor(data['gt_label'],
                                     device=self.device).long().view(-1)
        return dict(inputs=tokens, data_samples=labels)
