"""A resumable infinite sampler with per-draw seeds.

Each index it yields is a :class:`SeededIndex`: an ``int`` (so any dataset
accepts it) that also carries ``seed``, a deterministic function of
``(sampler seed, epoch, position in the epoch)``. vistok datasets run their
pipeline under :func:`vistok.utils.rng.seeded_rng` with that seed, so random
augmentation is the same whether data are loaded in the main process or in
workers, and whether a run was interrupted or not.

``skip(n)`` moves the start of the next ``__iter__`` to the ``n``-th draw of
this rank arithmetically (nothing is loaded), which is how
:class:`vistok.engine.loops.ResumableIterBasedTrainLoop` restores the data
position on resume.
"""
from typing import Iterator, Optional, Sized

import torch
from mmengine.dist import get_dist_info, sync_random_seed
from torch.utils.data import Sampler

from vistok.registry import DATA_SAMPLERS


class SeededIndex(int):
    """An ``int`` dataset index that carries the seed of this draw."""

    def __new__(cls, index: int, seed: int):
        obj = super().__new__(cls, index)
        obj.seed = seed
        return obj

    def __reduce__(self):
        return SeededIndex, (int(self), self.seed)

    def __repr__(self):
        return f'SeededIndex({int(self)}, seed={self.seed})'


def draw_seed(seed: int, epoch: int, position: int) -> int:
    """Seed of one draw; a cheap integer hash (SplitMix64 finaliser)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9
         + position * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    return x & 0xFFFFFFFF


@DATA_SAMPLERS.register_module()
class ResumableInfiniteSampler(Sampler):
    """Infinite sampler for iteration-based training.

    Epoch ``e`` is a permutation of the dataset drawn from ``seed + e``
    (identical on all ranks), padded by wrapping to a multiple of the world
    size and split round-robin between ranks.

    Args:
        dataset: a sized dataset.
        shuffle: permute each epoch (else sequential order).
        seed: shared random seed; ``None`` draws one and syncs it over ranks.
    """

    def __init__(self, dataset: Sized, shuffle: bool = True,
                 seed: Optional[int] = None):
        if len(dataset) == 0:
            raise ValueError('ResumableInfiniteSampler got an empty dataset')
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = sync_random_seed() if seed is None else int(seed)
        self.rank, self.world_size = get_dist_info()
        self.size = len(dataset)
        self.per_rank = -(-self.size // self.world_size)
        self._start = 0

    def skip(self, num_draws: int) -> None:
        """Start the next iteration after ``num_draws`` draws of this rank."""
        if num_draws < 0:
            raise ValueError(f'cannot skip a negative number of draws '
                             f'({num_draws})')
        self._start = int(num_draws)

    def _epoch_indices(self, epoch: int) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.size, generator=g)
        else:
            order = torch.arange(self.size)
        total = self.per_rank * self.world_size
        if total > self.size:
            order = order.repeat(-(-total // self.size))[:total]
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[SeededIndex]:
        epoch, offset = divmod(self._start, self.per_rank)
        while True:
            indices = self._epoch_indices(epoch).tolist()
            for pos in range(offset, self.per_rank):
                global_pos = pos * self.world_size + self.rank
                yield SeededIndex(indices[pos],
                                  draw_seed(self.seed, epoch, global_pos))
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:
        return self.per_rank

    def set_epoch(self, epoch: int) -> None:
        """Unused: the epoch is part of the infinite stream's position."""
