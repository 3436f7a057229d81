"""Top-k classification accuracy (mmpretrain's ``Accuracy``: same field
names, same ``accuracy/top{k}`` keys in percent)."""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from mmengine.evaluator import BaseMetric

from vistok.datasets.token_files import read_class_list
from vistok.registry import METRICS


def topk_hits(scores: torch.Tensor, labels: torch.Tensor,
              topk: Sequence[int]) -> torch.Tensor:
    """Whether each sample's label is among its ``k`` highest scores, for
    every ``k`` of ``topk``: bool ``(len(topk), N)``.

    Args:
        scores: ``(N, num_classes)`` logits or probabilities (any monotone
            transform gives the same result).
        labels: ``(N,)`` integer class indices in ``[0, num_classes)``.
        topk: the ``k`` values, each in ``[1, num_classes]``.

    Ties: the ``k`` highest are ``torch.topk``'s (as in mmpretrain), whose
    order among equal scores is unspecified. A label tied with the
    ``k``-th score may therefore count or not; the count always lies
    between the optimistic one (only strictly higher scores rank above the
    label) and the pessimistic one (equal scores rank above it too), which
    coincide when no score ties the label's.
    """
    if scores.dim() != 2:
        raise ValueError(f'scores must be (N, num_classes), got shape '
                         f'{tuple(scores.shape)}')
    num_classes = scores.shape[1]
    if max(topk) > num_classes:
        raise ValueError(
            f'topk={tuple(topk)} asks for top-{max(topk)} accuracy, but '
            f'pred_score has only {num_classes} classes (shape '
            f'{tuple(scores.shape[1:])}); use topk values <= {num_classes}')
    if labels.shape != scores.shape[:1]:
        raise ValueError(f'labels must be ({scores.shape[0]},) for scores '
                         f'{tuple(scores.shape)}, got {tuple(labels.shape)}')
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f'gt_label must be in [0, {num_classes}) (the '
                         f'pred_score classes), got labels in '
                         f'[{int(labels.min())}, {int(labels.max())}]')
    if torch.isnan(scores).any():
        raise ValueError('pred_score holds NaN: top-k accuracy is undefined')
    order = scores.topk(max(topk), dim=1).indices  # (N, maxk), best first
    hits = order == labels[:, None]
    return torch.stack([hits[:, :k].any(1) for k in topk])


def _field(sample, key: str):
    """``sample[key]`` of a data sample given as a dict (what mmengine's
    evaluator passes) or a :class:`~vistok.structures.DataSample`."""
    value = sample.get(key, None)
    if value is None:
        fields = sorted(sample.keys())
        raise KeyError(f'Accuracy needs {key!r} in every data sample (a '
                       f'classifier\'s predict fills pred_score and '
                       f'gt_label); this one has {fields}')
    return value


@METRICS.register_module()
class Accuracy(BaseMetric):
    """Top-k accuracy: the percentage of samples whose ``gt_label`` is among
    the ``k`` classes of highest ``pred_score``.

    Reads from each data sample ``pred_score`` (``(num_classes,)`` logits
    or probabilities) and ``gt_label`` (an integer, a scalar or a
    one-element tensor) and reports ``accuracy/top{k}`` for every ``k`` of
    ``topk``, in percent (mmpretrain's keys). Ties at the ``k``-th place
    are broken by ``torch.topk`` (see :func:`topk_hits`).

    With ``class_subset`` the model is scored on a subset of its classes,
    as for ImageNet-R's 200 ImageNet-1k classes (Hendrycks et al. 2021):
    ``pred_score`` is restricted to the subset's classes, in its order, and
    ``gt_label`` is a position in the subset (what an image folder of the
    subset's classes gives when it lists them in that order, e.g. sorted
    ImageNet wnids).

    Args:
        topk: ``k`` or the ``k`` values; each must be at most the number of
            classes (checked on the first batch, a clear error otherwise).
        class_subset: class ids of ``pred_score`` (a list, or a file of one
            id or class name per line; see
            :func:`vistok.datasets.read_class_list`), or None.
        class_names: a file or list naming the classes (line ``k`` = class
            ``k``, e.g. ImageNet's ``LOC_synset_mapping.txt``), needed when
            ``class_subset`` holds names.
        collect_device, prefix: see ``mmengine.evaluator.BaseMetric``
            (default prefix ``accuracy``).
    """
    default_prefix = 'accuracy'

    def __init__(self,
                 topk: Union[int, Sequence[int]] = (1, 5),
                 class_subset=None,
                 class_names=None,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.class_subset = (None if class_subset is None else torch.tensor(
            read_class_list(class_subset, class_names)[0]))
        topk = (topk, ) if isinstance(topk, int) else tuple(topk)
        if not topk or any(not isinstance(k, int) or k < 1 for k in topk):
            raise ValueError(f'topk must be a positive int or a non-empty '
                             f'sequence of them, got {topk!r}')
        self.topk = tuple(dict.fromkeys(topk))  # unique, in order

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        if not data_samples:
            return
        scores, labels = [], []
        for sample in data_samples:
            score = torch.as_tensor(_field(sample, 'pred_score'))
            label = torch.as_tensor(_field(sample, 'gt_label'))
            if score.dim() != 1:
                raise ValueError(f'pred_score must be (num_classes,), got '
                                 f'shape {tuple(score.shape)}')
            if label.numel() != 1:
                raise ValueError(f'gt_label must hold one class index, got '
                                 f'shape {tuple(label.shape)}')
            scores.append(score.detach().cpu().float())
            labels.append(int(label.reshape(())))
        shapes = {tuple(score.shape) for score in scores}
        if len(shapes) > 1:
            raise ValueError(f'pred_score of one batch must have one number '
                             f'of classes, got shapes {sorted(shapes)}')
        scores = torch.stack(scores)
        if self.class_subset is not None:
            if int(self.class_subset.max()) >= scores.shape[1]:
                raise ValueError(
                    f'class_subset holds class {int(self.class_subset.max())}'
                    f' but pred_score has {scores.shape[1]} classes')
            scores = scores[:, self.class_subset]
        hits = topk_hits(scores, torch.tensor(labels), self.topk)
        self.results.extend(
            tuple(bool(h) for h in column) for column in hits.t())

    def compute_metrics(self, results: List[Tuple[bool, ...]]) -> dict:
        counts = torch.tensor(results, dtype=torch.float64).mean(0) * 100
        return {f'top{k}': float(c) for k, c in zip(self.topk, counts)}
