"""Codebook usage of the tokens over an evaluation set."""
from typing import List, Optional, Sequence, Tuple

import torch
from mmengine.evaluator import BaseMetric

from vistok.models.quantizers.base import perplexity_from_counts
from vistok.registry import METRICS


@METRICS.register_module()
class CodebookUsage(BaseMetric):
    """Usage and perplexity of the token histogram over the whole set.

    ``process`` keeps each sample's histogram in sparse form (its distinct
    tokens and their counts), so the results stay small for large codebooks
    and mmengine's ``collect_results`` can drop the samples a distributed
    sampler padded; ``compute_metrics`` sums them into the histogram
    ``n (K,)`` and reports

    * ``usage``: fraction of the ``K`` codes used at least once;
    * ``perplexity``: ``exp(-Σ p log p)`` with ``p = n / Σ n`` (natural log).

    Each sample needs ``tokens`` (integer tensor of any shape) and
    ``codebook_size`` ``K``.

    Args:
        collect_device, prefix: see ``mmengine.evaluator.BaseMetric``.
    """

    def __init__(self,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            codes, counts = torch.unique(
                sample['tokens'].cpu().reshape(-1), return_counts=True)
            self.results.append((codes, counts, int(sample['codebook_size'])))

    def compute_metrics(
            self, results: List[Tuple[torch.Tensor, torch.Tensor,
                                      int]]) -> dict:
        sizes = {size for _, _, size in results}
        if len(sizes) != 1:
            raise ValueError(f'samples disagree on codebook_size: {sizes}')
        histogram = torch.zeros(sizes.pop(), dtype=torch.long)
        for codes, counts, _ in results:
            histogram.index_add_(0, codes, counts)
        usage = (histogram > 0).float().mean().item()
        return dict(
            usage=usage,
            perplexity=perplexity_from_counts(histogram).item())
