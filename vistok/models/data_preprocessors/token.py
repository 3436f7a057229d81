"""Batches of stored tokens (``TokenShardDataset`` samples) for generators."""
from typing import Optional, Sequence, Union

import torch
from mmengine.model import BaseDataPreprocessor

from vistok.registry import MODELS

Tokens = Union[torch.Tensor, Sequence[torch.Tensor]]


def is_level_major(indices: Sequence[Sequence[torch.Tensor]],
                   sample_idx: Optional[Sequence] = None) -> bool:
    """Whether nested ``indices`` are per-level lists of per-sample tensors
    (what mmengine's ``pseudo_collate`` makes of per-sample lists of levels)
    rather than per-sample lists of levels: every inner list holds tensors
    of one shape and, when the batch size is known (``sample_idx``, which
    ``pseudo_collate`` always carries), as many as the batch. When both
    readings fit (as many levels as samples, all of one shape), the
    Runner's level-major one is taken."""
    if any(len({tuple(t.shape) for t in inner}) != 1 for inner in indices):
        return False
    if sample_idx is not None:
        return all(len(inner) == len(sample_idx) for inner in indices)
    return True


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
        elif is_level_major(indices, data.get('sample_idx')):
            # the Runner's pseudo_collate transposes per-sample lists of
            # levels into per-level lists of samples
            tokens = [torch.stack(list(level)).long() for level in indices]
        else:  # per-sample lists of levels -> per-level batches
            levels = [torch.stack(level).long() for level in zip(*indices)]
            tokens = type(indices[0])(levels)
        labels: Optional[torch.Tensor] = None
        if data.get('gt_label') is not None:
            labels = torch.as_tensor(data['gt_label'],
                                     device=self.device).long().view(-1)
        return dict(inputs=tokens, data_samples=labels)
