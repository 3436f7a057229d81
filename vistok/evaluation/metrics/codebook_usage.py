"""Codebook usage of the tokens over an evaluation set, jointly and per
quantizer level."""
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from mmengine.evaluator import BaseMetric

from vistok.models.quantizers.base import usage_stats
from vistok.registry import METRICS

#: one sample's sparse histogram: (distinct ids, their counts, codebook size)
SparseCounts = Tuple[torch.Tensor, torch.Tensor, int]
#: the metrics reported per histogram (see ``usage_stats``)
REPORTED = ('usage', 'perplexity', 'entropy')


def sparse_counts(tokens: torch.Tensor, codebook_size: int) -> SparseCounts:
    """Distinct ids of ``tokens`` (any shape) and their counts; negative
    (dropped) ids are ignored."""
    tokens = tokens.detach().cpu().reshape(-1).long()
    codes, counts = torch.unique(tokens[tokens >= 0], return_counts=True)
    return codes, counts, int(codebook_size)


def dense_histogram(parts: Sequence[SparseCounts],
                    size_field: str) -> torch.Tensor:
    """Sum the per-sample sparse histograms of one vocabulary into ``(K,)``;
    ``size_field`` (the sample field giving ``K``) is named in errors."""
    sizes = {size for _, _, size in parts}
    if len(sizes) != 1:
        raise ValueError(f'samples disagree on {size_field}: {sorted(sizes)}')
    size = sizes.pop()
    histogram = torch.zeros(size, dtype=torch.long)
    for codes, counts, _ in parts:
        if len(codes) and codes.max() >= size:
            raise ValueError(f'token id {int(codes.max())} is outside the '
                             f'{size_field} = {size} codes')
        histogram.index_add_(0, codes, counts)
    return histogram


@METRICS.register_module()
class CodebookUsage(BaseMetric):
    """Usage, perplexity and entropy of the token histograms over the set.

    ``process`` keeps each sample's histograms in sparse form (distinct
    tokens and their counts), so the results stay small for large codebooks
    and mmengine's ``collect_results`` gathers them across ranks and drops
    the samples a distributed sampler padded. ``compute_metrics`` sums them
    into histograms ``n (K,)`` and reports, via
    :func:`~vistok.models.quantizers.base.usage_stats`:

    * ``usage``: fraction of the ``K`` codes used at least once;
    * ``entropy``: ``H = -Σ p log p`` with ``p = n / Σ n``, in nats, or in
      bits with ``log_base=2`` (what TiTok's evaluator reports);
    * ``perplexity``: ``exp(H_nats)`` (the same in every base).

    These come for the joint vocabulary from each sample's ``tokens``
    (integer tensor of any shape) and metainfo ``codebook_size`` ``K``, and,
    when samples carry ``token_levels`` (dict level prefix → the sample's
    tokens of that level) and metainfo ``level_codebook_sizes`` (dict prefix
    → ``K`` of that level), for every level as ``{prefix}usage``,
    ``{prefix}perplexity`` and ``{prefix}entropy`` (prefixes as in the
    quantizer's stats, see
    :func:`~vistok.models.quantizers.base.token_levels`; a single-level
    quantizer's prefix ``''`` gives the joint numbers again). Negative
    (dropped) token ids are ignored.

    Args:
        log_base: base of the reported entropy's logarithm (``None``: e).
        collect_device, prefix: see ``mmengine.evaluator.BaseMetric``.
    """

    def __init__(self,
                 log_base: Optional[float] = None,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        if log_base is not None and not (log_base > 0 and log_base != 1):
            raise ValueError(f'log_base must be positive and not 1, got '
                             f'{log_base!r}')
        self.log_base = log_base

    def process(self, data_batch, data_samples: Sequence[Mapping]) -> None:
        for sample in data_samples:
            levels = {}
            if 'token_levels' in sample:
                if 'level_codebook_sizes' not in sample:
                    raise KeyError('a sample with token_levels needs the '
                                   'metainfo level_codebook_sizes')
                sizes = sample['level_codebook_sizes']
                missing = sample['token_levels'].keys() - sizes.keys()
                if missing:
                    raise KeyError(f'level_codebook_sizes lacks the levels '
                                   f'{sorted(missing)} of token_levels')
                levels = {
                    name: sparse_counts(tokens, sizes[name])
                    for name, tokens in sample['token_levels'].items()
                }
            self.results.append(
                dict(tokens=sparse_counts(sample['tokens'],
                                          sample['codebook_size']),
                     levels=levels))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        histograms = {'': dense_histogram(
            [result['tokens'] for result in results], 'codebook_size')}
        level_names = [sorted(result['levels']) for result in results]
        if any(names != level_names[0] for names in level_names):
            raise ValueError(
                f'samples disagree on the token_levels prefixes: '
                f'{sorted(set(map(tuple, level_names)))}')
        for name in level_names[0]:
            histograms[name] = dense_histogram(
                [result['levels'][name] for result in results],
                f'level_codebook_sizes[{name!r}]')
        metrics = {}
        for name, histogram in histograms.items():
            stats = usage_stats(histogram, prefix=name)
            if self.log_base is not None:
                stats[name + 'entropy'] = stats[name + 'entropy'] / math.log(
                    self.log_base)
            metrics.update({name + key: stats[name + key].item()
                            for key in REPORTED})
        return metrics
