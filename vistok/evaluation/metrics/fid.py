"""rFID / FID, Inception Score and KID with a pinned, printed protocol.

* FID (Heusel et al. 2017, Eq. 6): ``‖μ_p − μ_r‖² + Tr(Σ_p + Σ_r −
  2 (Σ_p Σ_r)^½)`` of Gaussian fits to pool features of the predictions
  and of the reference images.
* IS (Salimans et al. 2016): ``exp(E_x KL(p(y|x) ‖ p(y)))`` averaged over
  ``is_splits`` splits of the predictions' logits.
* KID (Bińkowski et al. 2018, Eq. 4): unbiased MMD² with the cubic
  polynomial kernel ``(xᵀy / D + 1)³``, mean over ``kid_subsets`` random
  subsets of ``kid_subset_size`` images.

The arithmetic is torch-fidelity 0.4's (``fid_features_to_statistics``,
``fid_statistics_to_metric``, ``isc_features_to_metric``,
``kid_features_to_metric``); feature extraction, streaming, multi-rank
gathering and the reference statistics cache are vistok's.

rFID numbers are only comparable under the same protocol (reference set,
crop, resize filter, 8-bit rounding, image count, Inception port and
weights): :func:`fid_protocol_fingerprint` hashes those fields; the metric
logs the fingerprint next to every result and returns its short hash as
``fid_protocol``.
"""
import hashlib
import json
import logging
import os
import os.path as osp
import re
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from torch_fidelity.metric_fid import (
    KEY_METRIC_FID,
    fid_features_to_statistics,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_isc import (
    KEY_METRIC_ISC_MEAN,
    KEY_METRIC_ISC_STD,
    isc_features_to_metric,
)
from torch_fidelity.metric_kid import (
    KEY_METRIC_KID_MEAN,
    KEY_METRIC_KID_STD,
    kid_features_to_metric,
)

from vistok.evaluation.feature_extractors import FeatureExtractor
from vistok.registry import FEATURE_EXTRACTORS, METRICS
from vistok.utils.fileio import sha256_file
from vistok.utils.weights import MissingWeightsError

SUPPORTED_METRICS = ('fid', 'is', 'kid')
DEFAULT_PROTOCOL = dict(crop=None, resize_filter=None, uint8_rounding=True)
#: the reference when it is the ``gt_img`` of the evaluated samples
SAME_SAMPLES = 'gt_img of the evaluated samples'


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/vistok/fid_stats`` (``~/.cache/vistok/fid_stats``)."""
    root = os.environ.get('XDG_CACHE_HOME', osp.expanduser('~/.cache'))
    return osp.join(root, 'vistok', 'fid_stats')


def fid_protocol_fingerprint(reference: str,
                             num_images: int,
                             extractor_name: str,
                             extractor_weights_sha256: str,
                             extractor_input_size: Optional[int] = None,
                             extractor_resize_filter: Optional[str] = None,
                             reference_sha256: Optional[str] = None,
                             protocol: Optional[dict] = None,
                             hash_chars: int = 12) -> Tuple[dict, str]:
    """The fields that decide whether two FIDs are comparable, and a short
    hash of them.

    Args:
        reference: name (or path) of the reference image set.
        num_images: number of reference images.
        extractor_name, extractor_weights_sha256, extractor_input_size,
        extractor_resize_filter: the feature extractor's attributes.
        reference_sha256: SHA-256 of a precomputed reference statistics file.
        protocol: description of the image pipeline (``crop``,
            ``resize_filter``, ``uint8_rounding`` and any extra fields, e.g.
            ``image_size`` or ``file_format``); JSON-serialisable values.
        hash_chars: length of the short hash.

    Returns:
        ``(fingerprint, short_hash)``: the dict and the first ``hash_chars``
        hex digits of the SHA-256 of its canonical JSON.
    """
    fingerprint = dict(DEFAULT_PROTOCOL, **(protocol or {}))
    fingerprint.update(
        reference=reference, reference_sha256=reference_sha256,
        num_images=int(num_images), extractor=extractor_name,
        extractor_weights_sha256=extractor_weights_sha256,
        extractor_input_size=extractor_input_size,
        extractor_resize_filter=extractor_resize_filter)
    canonical = json.dumps(fingerprint, sort_keys=True,
                           separators=(',', ':'))
    return fingerprint, hashlib.sha256(canonical.encode()).hexdigest()[
        :hash_chars]


def to_uint8(image: torch.Tensor, rounding: bool = True) -> torch.Tensor:
    """Float images (any shape) in [0, 255] → uint8, clamped and rounded to
    the nearest level (``rounding=False``: truncated, like ``.byte()``);
    uint8 input is returned unchanged."""
    if image.dtype == torch.uint8:
        return image
    image = image.detach().float().clamp(0, 255)
    return (image.round() if rounding else image.floor()).to(torch.uint8)


@METRICS.register_module()
class FrechetInceptionDistance(BaseMetric):
    """FID (and optionally IS, KID) of ``pred_img`` against a reference.

    Samples carry ``pred_img`` (float ``(C, H, W)`` in [0, 255], C = 3 or 1,
    or uint8) and, unless the reference statistics come from a file,
    ``gt_img``. Images become uint8 (rounded when
    ``protocol['uint8_rounding']``) and go through the feature extractor
    batch-wise in :meth:`process`, on the images' device; each image is
    extracted once, and one row of features per sample is kept in
    ``self.results`` so that mmengine gathers them over ranks (dropping the
    samples a distributed sampler padded).

    Reference (``reference``):

    * ``None``: the ``gt_img`` of the same samples (rFID), extracted every
      evaluation.
    * ``dict(name=..., num_images=N)``: the ``gt_img`` of the evaluated
      samples are a fixed, named set of ``N`` images (e.g. ImageNet val,
      centre crop 256). Their statistics are computed once and cached in
      ``cache_dir`` as ``<name>-<hash>.npz`` (``mu``, ``sigma``, ``count``,
      the ``fingerprint``, and ``features`` when KID is requested), the hash
      being the protocol fingerprint's; later evaluations skip ``gt_img``.
    * ``dict(stats_path=..., name=...)``: precomputed statistics (an
      ``.npz`` with ``mu``, ``sigma`` [, ``count``, ``features``]); the
      file's SHA-256 enters the fingerprint.

    Reports ``fid``; ``is``, ``is_std``; ``kid``, ``kid_std`` (as requested)
    and ``fid_protocol`` (the short fingerprint hash); the full fingerprint
    is logged.

    Args:
        feature_extractor: config of a ``FEATURE_EXTRACTORS`` entry (or a
            built :class:`FeatureExtractor`). Its weights file must exist at
            construction (``MissingWeightsError``, key
            ``feature_extractor.weights_path``); it is loaded at the first
            batch.
        metrics: subset of ``('fid', 'is', 'kid')``.
        kid_subset_size: images per KID subset (clamped to the image
            counts, with a logged notice).
        kid_subsets: number of KID subsets.
        is_splits: number of IS splits (clamped to the image count).
        rng_seed: seed of the IS shuffle and the KID subsets.
        reference: see above.
        protocol: description of the image pipeline, recorded in the
            fingerprint (``crop``, ``resize_filter``, ``uint8_rounding`` —
            the only field the metric acts on — and any extra fields).
        cache_dir: where reference statistics are cached (default
            :func:`default_cache_dir`; torch-fidelity's cache is never used).
        collect_device, prefix: see ``mmengine.evaluator.BaseMetric``.
    """

    def __init__(self,
                 feature_extractor: Union[dict, FeatureExtractor] = dict(
                     type='PytorchFIDInception', weights_path=None),
                 metrics: Sequence[str] = ('fid', ),
                 kid_subset_size: int = 1000,
                 kid_subsets: int = 100,
                 is_splits: int = 10,
                 rng_seed: int = 2020,
                 reference: Optional[dict] = None,
                 protocol: Optional[dict] = None,
                 cache_dir: Optional[str] = None,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        metrics = (metrics, ) if isinstance(metrics, str) else tuple(metrics)
        unknown = sorted(set(metrics) - set(SUPPORTED_METRICS))
        if unknown or not metrics:
            raise ValueError(f'FrechetInceptionDistance: metrics must be a '
                             f'non-empty subset of {SUPPORTED_METRICS}, got '
                             f'{metrics}')
        self.metrics = metrics
        self.extractor = (feature_extractor
                          if isinstance(feature_extractor, torch.nn.Module)
                          else FEATURE_EXTRACTORS.build(feature_extractor))
        if 'is' in metrics and not self.extractor.num_classes:
            raise ValueError(f'FrechetInceptionDistance: metrics include '
                             f"'is' but {self.extractor.name} has no logits")
        try:
            self.extractor.check_weights()
        except MissingWeightsError as err:
            raise err.with_prefix('feature_extractor') from None
        self.kid_subset_size, self.kid_subsets = kid_subset_size, kid_subsets
        self.is_splits, self.rng_seed = is_splits, rng_seed
        self.protocol = dict(DEFAULT_PROTOCOL, **(protocol or {}))
        self.cache_dir = cache_dir or default_cache_dir()
        self.reference = self._check_reference(reference)
        self._device = None  # set when the weights are loaded

    @staticmethod
    def _check_reference(reference: Optional[dict]) -> Optional[dict]:
        if reference is None:
            return None
        reference = dict(reference)
        unknown = sorted(set(reference) - {'name', 'num_images', 'stats_path'})
        if unknown:
            raise ValueError(f'FrechetInceptionDistance: unknown reference '
                             f'keys {unknown} (allowed: name, num_images, '
                             'stats_path)')
        path = reference.pop('stats_path', None)
        if path is not None:
            reference['stats_path'] = path
            if not osp.isfile(osp.expanduser(path)):
                raise FileNotFoundError(
                    f'FrechetInceptionDistance: reference statistics file '
                    f'{path!r} (config key reference.stats_path) does not '
                    'exist')
            reference.setdefault('name', osp.basename(path))
        elif not reference.get('name') or not reference.get('num_images'):
            raise ValueError(
                'FrechetInceptionDistance: a cached reference needs '
                'reference.name and reference.num_images (the size of the '
                'reference set), or reference.stats_path')
        return reference

    # --- feature extraction -------------------------------------------------
    def _prepare(self, device: torch.device) -> None:
        """Load the extractor's weights (first call) and move it to
        ``device``."""
        if self._device is None:
            self.extractor.init_weights()
        if self._device != device:
            self.extractor.to(device)
            self._device = device

    @torch.no_grad()
    def extract(self, images: List[torch.Tensor]) -> Dict[str, np.ndarray]:
        """Features (and logits) of ``(C, H, W)`` images as float32 arrays
        ``(N, D)``; equal-sized images go through the extractor together."""
        rounding = self.protocol['uint8_rounding']
        for image in images:
            if image.dim() != 3 or image.shape[0] not in (1, 3):
                raise ValueError('FrechetInceptionDistance expects (C, H, W) '
                                 f'images with C = 1 or 3, got shape '
                                 f'{tuple(image.shape)}')
        # equal shapes: convert and extract as one batch
        groups = ([torch.stack(images)]
                  if len({i.shape for i in images}) == 1 else
                  [i[None] for i in images])
        groups = [to_uint8(g, rounding).expand(-1, 3, -1, -1) for g in groups]
        outputs = []
        for group in groups:
            with torch.autocast(device_type=group.device.type, enabled=False):
                outputs.append(self.extractor(group))
        return {key: torch.cat([o[key] for o in outputs]).float().cpu()
                .numpy() for key in outputs[0]}

    def _cache_path(self) -> str:
        _, short_hash = self._fingerprint(self.reference['name'],
                                          self.reference['num_images'])
        name = re.sub(r'[^A-Za-z0-9._-]+', '_', self.reference['name'])
        return osp.join(self.cache_dir, f'{name}-{short_hash}.npz')

    def _cached_reference(self) -> Optional[str]:
        """The cache file if it exists and holds what is needed."""
        if self.reference is None or 'stats_path' in self.reference:
            return None
        path = self._cache_path()
        if not osp.isfile(path):
            return None
        if 'kid' in self.metrics:
            with np.load(path) as stats:
                if 'features' not in stats.files:
                    return None
        return path

    def _needs_gt(self) -> bool:
        if self.reference is None:
            return True
        return ('stats_path' not in self.reference
                and self._cached_reference() is None)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Extract features of ``pred_img`` (and ``gt_img`` when the
        reference statistics are not available yet)."""
        if not data_samples:
            return
        self._prepare(data_samples[0]['pred_img'].device)
        images = [sample['pred_img'] for sample in data_samples]
        with_gt = self._needs_gt()
        if with_gt:
            images += [sample['gt_img'] for sample in data_samples]
        out = self.extract(images)
        n = len(data_samples)
        for i in range(n):
            row = dict(pred=out['features'][i])
            if 'is' in self.metrics:
                row['logits'] = out['logits'][i]
            if with_gt:
                row['gt'] = out['features'][n + i]
            self.results.append(row)

    # --- metrics ------------------------------------------------------------
    def _fingerprint(self, reference: str, num_images: int,
                     reference_sha256: Optional[str] = None):
        ext = self.extractor
        return fid_protocol_fingerprint(
            reference, num_images, ext.name, ext.weights_sha256,
            ext.input_size, ext.resize_filter, reference_sha256,
            self.protocol)

    def _reference_stats(self, results: List[dict]):
        """``(stats, features or None, fingerprint, short_hash)`` of the
        reference."""
        if self.reference is not None and 'stats_path' in self.reference:
            path = osp.expanduser(self.reference['stats_path'])
            with np.load(path) as data:
                stats = dict(mu=data['mu'].astype(np.float64),
                             sigma=data['sigma'].astype(np.float64))
                count = int(data['count']) if 'count' in data.files else -1
                features = (data['features'] if 'features' in data.files
                            else None)
            if 'kid' in self.metrics and features is None:
                raise ValueError(f'KID needs reference features, but {path} '
                                 '(reference.stats_path) holds only mu and '
                                 'sigma')
            return (stats, features) + self._fingerprint(
                self.reference['name'], count, sha256_file(path))
        cached = self._cached_reference()
        if cached is not None:
            return self._load_cache(cached, len(results))
        if any('gt' not in row for row in results):
            raise RuntimeError(
                'FrechetInceptionDistance: some samples lack gt_img features '
                f'although no usable reference cache exists in '
                f'{self.cache_dir} (it changed during the evaluation); '
                'evaluate again')
        features = np.stack([row['gt'] for row in results])
        stats = self._statistics(features)
        if self.reference is None:
            return (stats, features) + self._fingerprint(
                SAME_SAMPLES, len(features))
        self._check_count(len(features))
        fingerprint, short_hash = self._fingerprint(
            self.reference['name'], len(features))
        self._write_cache(stats, features, fingerprint)
        return stats, features, fingerprint, short_hash

    def _check_count(self, num_evaluated: int) -> None:
        """The evaluated samples must be the whole named reference set."""
        if num_evaluated != self.reference['num_images']:
            raise ValueError(
                f'FrechetInceptionDistance: reference '
                f"{self.reference['name']!r} declares num_images="
                f"{self.reference['num_images']} but {num_evaluated} "
                'samples were evaluated')

    @staticmethod
    def _statistics(features: np.ndarray) -> dict:
        return fid_features_to_statistics(
            torch.from_numpy(features.astype(np.float64)))

    def _write_cache(self, stats, features, fingerprint) -> None:
        path = self._cache_path()
        os.makedirs(self.cache_dir, exist_ok=True)
        arrays = dict(mu=stats['mu'], sigma=stats['sigma'],
                      count=np.int64(len(features)),
                      fingerprint=np.array(json.dumps(fingerprint,
                                                      sort_keys=True)))
        if 'kid' in self.metrics:
            arrays['features'] = features
        fd, tmp = tempfile.mkstemp(suffix='.npz.tmp', dir=self.cache_dir)
        try:
            with os.fdopen(fd, 'wb') as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if osp.exists(tmp):
                os.remove(tmp)
            raise
        print_log(f'FID reference statistics written to {path}',
                  logger='current')

    def _load_cache(self, path: str, num_evaluated: int):
        fingerprint, short_hash = self._fingerprint(
            self.reference['name'], self.reference['num_images'])
        with np.load(path) as data:
            stored = json.loads(str(data['fingerprint']))
            stats = dict(mu=data['mu'], sigma=data['sigma'])
            features = data['features'] if 'features' in data.files else None
        if stored != fingerprint:
            raise ValueError(f'{path} was written under another protocol '
                             f'({stored}) than {fingerprint}; delete it')
        self._check_count(num_evaluated)
        print_log(f'FID reference statistics read from {path}',
                  logger='current')
        return stats, features, fingerprint, short_hash

    def _clamped(self, what: str, requested: int, available: int) -> int:
        if requested > available:
            print_log(f'FrechetInceptionDistance: {what} {requested} clamped '
                      f'to the image count {available}', logger='current',
                      level=logging.WARNING)
        return min(requested, available)

    def compute_metrics(self, results: List[dict]) -> dict:
        pred = np.stack([row['pred'] for row in results])
        stats, ref_features, fingerprint, short_hash = \
            self._reference_stats(results)
        out = {}
        if 'fid' in self.metrics:
            out['fid'] = fid_statistics_to_metric(
                self._statistics(pred), stats, verbose=False)[KEY_METRIC_FID]
        if 'is' in self.metrics:
            logits = torch.from_numpy(np.stack([r['logits'] for r in results]))
            splits = self._clamped('is_splits', self.is_splits, len(logits))
            score = isc_features_to_metric(logits, splits=splits,
                                           shuffle=True,
                                           rng_seed=self.rng_seed)
            out['is'] = score[KEY_METRIC_ISC_MEAN]
            out['is_std'] = score[KEY_METRIC_ISC_STD]
        if 'kid' in self.metrics:
            size = self._clamped('kid_subset_size', self.kid_subset_size,
                                 min(len(pred), len(ref_features)))
            score = kid_features_to_metric(
                torch.from_numpy(pred.astype(np.float64)),
                torch.from_numpy(ref_features.astype(np.float64)),
                kid_subsets=self.kid_subsets, kid_subset_size=size,
                rng_seed=self.rng_seed, verbose=False)
            out['kid'] = score[KEY_METRIC_KID_MEAN]
            out['kid_std'] = score[KEY_METRIC_KID_STD]
        out['fid_protocol'] = short_hash
        values = ', '.join(f'{k}={v:.6g}' for k, v in out.items()
                           if k != 'fid_protocol')
        print_log(f'{values} under FID protocol {short_hash}: '
                  f'{json.dumps(fingerprint, sort_keys=True)}',
                  logger='current')
        return out
