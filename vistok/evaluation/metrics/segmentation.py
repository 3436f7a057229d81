"""Segmentation metrics of the EM connectomics benchmarks: variation of
information (Meilă 2007) and the adapted Rand error (Arganda-Carreras et al.
2015), computed exactly like ``skimage.metrics.variation_of_information``
and ``skimage.metrics.adapted_rand_error`` (which the official TokenUnify
evaluation calls), from contingency tables.

Each sample contributes the contingency counts of its ``(gt_label,
pred_label)`` voxel pairs (the collected results are small: one row per
overlapping pair of segments, whatever the volume size). Samples sharing a
``volume_name`` are summed into one table first (disjoint parts of one
volume whose labels are consistent across the parts); the scores are then
computed per volume — VOI and ARAND of a volume are not averages of parts —
reported per volume (``voi/<volume_name>``) and averaged over volumes with
equal weight (``voi``).

Boundary-widened ground truth (``widen_gt_boundaries=True``) is the
protocol of TokenUnify's Table 1: the official evaluation
(``src/inference_monai.py`` and ``src/engine_finetune2.py``, ydchen0806/
TokenUnify@221674f) scores against the labels returned by
``Trainset.valid_provide`` (``src/data_provider_labeled.py``), which with
the configs' ``if_dilate: True`` are passed through ``seg_widen_border(label,
tsz_h=1)`` (``data/data_segmentation.py``): every voxel whose 3 x 3 in-plane
window holds more than one non-zero id becomes 0, and ``ignore_labels=(0)``
then leaves it out. The unwidened score (the official ``Provider_valid``
path scores against its ``labels_origin``) is the default and, next to the
widened one, ``report_unwidened=True``.
"""
from abc import abstractmethod
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from mmengine.evaluator import BaseMetric

from vistok.datasets.em.affinity import widen_label_boundaries
from vistok.registry import METRICS

Table = Tuple[np.ndarray, np.ndarray, np.ndarray]


def _as_label_array(labels, name: str) -> np.ndarray:
    if hasattr(labels, 'detach'):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f'{name} must hold integer labels, got dtype '
                        f'{labels.dtype}')
    return labels


def _sum_table(gt: np.ndarray, pred: np.ndarray,
               counts: Optional[np.ndarray] = None) -> Table:
    """Unique ``(gt, pred)`` pairs with their summed counts (count 1 per
    pair when ``counts`` is None)."""
    gt_ids, gt_index = np.unique(gt, return_inverse=True)
    pred_ids, pred_index = np.unique(pred, return_inverse=True)
    keys = gt_index.ravel().astype(np.int64) * len(pred_ids) + \
        pred_index.ravel()
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    summed = np.bincount(
        inverse.ravel(), weights=counts,
        minlength=len(unique_keys)).astype(np.int64)
    return (gt_ids[unique_keys // len(pred_ids)].astype(np.int64),
            pred_ids[unique_keys % len(pred_ids)].astype(np.int64), summed)


def contingency_table(gt_label, pred_label,
                      ignore_labels: Sequence[int] = (0, )) -> Table:
    """Contingency counts of two label volumes of the same shape.

    Voxels whose ground-truth label is in ``ignore_labels`` are not counted
    (as in scikit-image); predicted labels are all counted, 0 included.

    Returns:
        ``(gt_ids, pred_ids, counts)``, int64 arrays of equal length: the
        number of voxels labelled ``gt_ids[k]`` in the ground truth and
        ``pred_ids[k]`` in the prediction.
    """
    gt = _as_label_array(gt_label, 'gt_label')
    pred = _as_label_array(pred_label, 'pred_label')
    if gt.shape != pred.shape:
        raise ValueError(f'gt_label {gt.shape} and pred_label {pred.shape} '
                         f'must have the same shape')
    gt, pred = gt.ravel(), pred.ravel()
    keep = ~np.isin(gt, np.asarray(ignore_labels, dtype=gt.dtype))
    return _sum_table(gt[keep], pred[keep])


def variation_of_information(table: Table,
                             log_base: float = 2.0) -> Tuple[float, float]:
    """``(split, merge) = (H(pred | gt), H(gt | pred))`` of a contingency
    table, in units of ``log_base`` (2: bits, as scikit-image and waterz;
    ``math.e``: nats). VOI = split + merge (Meilă 2007)."""
    gt_ids, pred_ids, counts = table
    total = counts.sum()
    if total == 0:
        raise ValueError('the contingency table is empty: every voxel has an '
                         'ignored ground-truth label')
    p = counts / total
    gt_index = np.unique(gt_ids, return_inverse=True)[1].ravel()
    pred_index = np.unique(pred_ids, return_inverse=True)[1].ravel()
    gt_of_pair = np.bincount(gt_index, weights=p)[gt_index]
    pred_of_pair = np.bincount(pred_index, weights=p)[pred_index]
    scale = np.log(log_base)
    split = -np.sum(p * np.log(p / gt_of_pair)) / scale
    merge = -np.sum(p * np.log(p / pred_of_pair)) / scale
    return float(split), float(merge)


def adapted_rand_error(table: Table,
                       alpha: float = 0.5) -> Tuple[float, float, float]:
    """``(error, precision, recall)`` exactly as
    ``skimage.metrics.adapted_rand_error`` (its pair-counting formulas,
    including its naming: ``precision`` divides by the ground-truth pairs,
    ``recall`` by the predicted pairs); ``error = 1 - Σp² / (α Σa² +
    (1 - α) Σb²)`` with pair counts ``x² - x``."""
    if not 0 <= alpha <= 1:
        raise ValueError(f'alpha must be in [0, 1], got {alpha}')
    gt_ids, pred_ids, counts = table
    counts = counts.astype(np.float64)
    total = counts.sum()
    if total == 0:
        raise ValueError('the contingency table is empty: every voxel has an '
                         'ignored ground-truth label')
    gt_sizes = np.bincount(
        np.unique(gt_ids, return_inverse=True)[1].ravel(), weights=counts)
    pred_sizes = np.bincount(
        np.unique(pred_ids, return_inverse=True)[1].ravel(), weights=counts)
    joint_pairs = counts @ counts - total
    gt_pairs = gt_sizes @ gt_sizes - total
    pred_pairs = pred_sizes @ pred_sizes - total
    with np.errstate(divide='ignore', invalid='ignore'):
        precision = joint_pairs / gt_pairs
        recall = joint_pairs / pred_pairs
        fscore = joint_pairs / (alpha * gt_pairs + (1 - alpha) * pred_pairs)
    return float(1.0 - fscore), float(precision), float(recall)


#: suffix of the keys scored against the unwidened ground truth
UNWIDENED_SUFFIX = '_unwidened'


class ContingencyMetric(BaseMetric):
    """Base of metrics computed per volume from contingency tables of
    ``pred_label`` against ``gt_label`` (integer ``(D, H, W)`` arrays or
    tensors of each predicted sample).

    Keys: ``<score>`` is the mean over volumes; with ``per_volume``, each
    named volume (its ``group_key`` metainfo, e.g. ``volume_name``) also
    gets ``<score>/<volume>``; with ``report_unwidened``, the same keys
    scored against the unwidened ground truth end in ``_unwidened``
    (``voi_unwidened``, ``voi_unwidened/wafer4``).

    Args:
        ignore_labels: ground-truth labels whose voxels are not counted
            (0: background / unlabelled, as the official evaluation).
        group_key: metainfo key whose equal values mark parts of one volume
            (their tables are summed); ``None`` or a missing key: every
            sample is its own volume.
        widen_gt_boundaries: score against the ground truth widened by
            :func:`vistok.datasets.em.affinity.widen_label_boundaries`
            (in-plane, slice by slice, the widening of the affinity
            targets: TokenUnify's Table 1 protocol, see the module
            docstring); the widened voxels become 0, so 0 must be in
            ``ignore_labels``. Each sample is widened on its own with
            mirrored borders, so give whole test volumes (the official
            widens the whole test volume): a grid of crops would widen
            differently along the crop borders.
        widen_radius: half width of the in-plane window (official: 1).
        report_unwidened: also report the scores against the unwidened
            ground truth (keys ending in ``_unwidened``); only with
            ``widen_gt_boundaries``.
        per_volume: report ``<score>/<volume>`` for each named volume.
        collect_device, prefix: see ``mmengine.evaluator.BaseMetric``.
    """

    def __init__(self,
                 ignore_labels: Sequence[int] = (0, ),
                 group_key: Optional[str] = 'volume_name',
                 widen_gt_boundaries: bool = False,
                 widen_radius: int = 1,
                 report_unwidened: bool = False,
                 per_volume: bool = True,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ignore_labels = tuple(int(i) for i in ignore_labels)
        if widen_gt_boundaries and 0 not in self.ignore_labels:
            raise ValueError(
                f'widen_gt_boundaries sets the widened boundary voxels to '
                f'0, which must then be ignored: add 0 to ignore_labels '
                f'(got {self.ignore_labels})')
        if isinstance(widen_radius, bool) or not isinstance(
                widen_radius, int) or widen_radius < 1:
            raise ValueError(f'widen_radius must be an int >= 1, got '
                             f'{widen_radius!r}')
        if report_unwidened and not widen_gt_boundaries:
            raise ValueError('report_unwidened=True needs '
                             'widen_gt_boundaries=True (without widening '
                             'the scores are already the unwidened ones)')
        self.group_key = group_key
        self.widen_gt_boundaries = widen_gt_boundaries
        self.widen_radius = widen_radius
        self.report_unwidened = report_unwidened
        self.per_volume = per_volume

    def _tables(self, gt_label, pred_label) -> Dict[str, Table]:
        """Contingency tables by key suffix: ``''`` the scored one,
        ``UNWIDENED_SUFFIX`` the unwidened one when reported."""
        if not self.widen_gt_boundaries:
            return {'': contingency_table(gt_label, pred_label,
                                          self.ignore_labels)}
        gt = _as_label_array(gt_label, 'gt_label')
        if gt.ndim != 3:
            raise ValueError(
                f'{type(self).__name__}(widen_gt_boundaries=True) widens '
                f'(D, H, W) ground truth in-plane, got gt_label of shape '
                f'{gt.shape}')
        tables = {'': contingency_table(
            widen_label_boundaries(gt, self.widen_radius), pred_label,
            self.ignore_labels)}
        if self.report_unwidened:
            tables[UNWIDENED_SUFFIX] = contingency_table(
                gt, pred_label, self.ignore_labels)
        return tables

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            for key in ('pred_label', 'gt_label'):
                if key not in sample:
                    raise KeyError(f'{type(self).__name__} needs "{key}" in '
                                   f'every data sample, got keys '
                                   f'{sorted(sample)}')
            volume = (sample.get(self.group_key)
                      if self.group_key is not None else None)
            # one result per sample: mmengine's collect_results keeps the
            # first `len(dataset)` results (and interleaves ranks by them)
            self.results.append(dict(volume=volume, tables=self._tables(
                sample['gt_label'], sample['pred_label'])))

    @abstractmethod
    def volume_scores(self, table: Table) -> Dict[str, float]:
        """Named scores of one volume's contingency table."""

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        metrics = {}
        for suffix in results[0]['tables']:
            groups, singles = {}, []
            for result in results:
                part = result['tables'][suffix]
                if result['volume'] is None:
                    singles.append((None, [part]))
                else:
                    groups.setdefault(result['volume'], []).append(part)
            scores = []
            for volume, parts in list(groups.items()) + singles:
                table = _sum_table(*(np.concatenate([p[i] for p in parts])
                                     for i in range(3)))
                scores.append((volume, self.volume_scores(table)))
            for name in scores[0][1]:
                metrics[name + suffix] = float(
                    np.mean([s[name] for _, s in scores]))
            if self.per_volume:
                for volume, score in scores:
                    if volume is not None:
                        metrics.update({
                            f'{name}{suffix}/{volume}': value
                            for name, value in score.items()})
        return metrics


@METRICS.register_module()
class VOI(ContingencyMetric):
    """Variation of information of ``pred_label`` against ``gt_label``,
    mean over volumes: ``voi_split = H(pred | gt)`` (over-segmentation),
    ``voi_merge = H(gt | pred)`` (under-segmentation), ``voi`` their sum;
    lower is better. Equals ``skimage.metrics.variation_of_information(gt,
    pred, ignore_labels=[0])`` = ``[split, merge]``.

    Args:
        log_base: base of the logarithm. Default 2 (bits): scikit-image 0.26
            and waterz compute in bits, so this matches the official
            evaluation and the published tables; ``math.e`` gives nats.
        ignore_labels, group_key, widen_gt_boundaries, widen_radius,
            report_unwidened, per_volume, collect_device, prefix: see
            :class:`ContingencyMetric`.
    """

    def __init__(self, log_base: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        if log_base <= 0 or log_base == 1:
            raise ValueError(f'log_base must be positive and != 1, got '
                             f'{log_base}')
        self.log_base = log_base

    def volume_scores(self, table: Table) -> Dict[str, float]:
        split, merge = variation_of_information(table, self.log_base)
        return dict(voi_split=split, voi_merge=merge, voi=split + merge)


@METRICS.register_module()
class AdaptedRandError(ContingencyMetric):
    """Adapted Rand error (ARAND, 1 - Rand F-score) of ``pred_label``
    against ``gt_label``, mean over volumes; lower is better. Voxels with
    ground-truth label 0 are ignored (scikit-image's default). Reports
    ``arand`` = ``skimage.metrics.adapted_rand_error(gt, pred)[0]`` and
    skimage's ``arand_precision`` / ``arand_recall``.

    Args:
        alpha: weight of the precision term in the F-score (0.5: equal).
        ignore_labels, group_key, widen_gt_boundaries, widen_radius,
            report_unwidened, per_volume, collect_device, prefix: see
            :class:`ContingencyMetric`.
    """

    def __init__(self, alpha: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= alpha <= 1:
            raise ValueError(f'alpha must be in [0, 1], got {alpha}')
        self.alpha = alpha

    def volume_scores(self, table: Table) -> Dict[str, float]:
        error, precision, recall = adapted_rand_error(table, self.alpha)
        return dict(
            arand=error, arand_precision=precision, arand_recall=recall)
