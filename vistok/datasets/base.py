"""Base class of vistok's map-style datasets: per-draw seeded augmentation.

:class:`vistok.datasets.samplers.ResumableInfiniteSampler` yields
:class:`~vistok.datasets.samplers.SeededIndex` indices: ``int`` s carrying the
seed of the draw. A dataset deriving from :class:`SeededDatasetMixin` runs its
pipeline with the global python / numpy / torch RNGs seeded by that seed
(:func:`vistok.utils.rng.seeded_rng`) and restored afterwards, so random
augmentation is a deterministic function of the draw: the same in the main
process or in any DataLoader worker, before or after a resume. Plain ``int``
indices behave exactly as in mmengine. Datasets that build their sample dict
themselves (the token datasets) run their pipeline the same way with
:func:`apply_pipeline`.
"""
import contextlib
from typing import Callable, List, Sequence, Union

from mmengine.dataset import BaseDataset

from vistok.registry import TRANSFORMS
from vistok.utils.rng import seeded_rng


def build_pipeline(
        pipeline: Sequence[Union[dict, Callable]]) -> List[Callable]:
    """Build transform configs with vistok's ``TRANSFORMS``, which also finds
    mmcv's transforms (in its parent), with or without a default scope."""
    return [TRANSFORMS.build(t) if isinstance(t, dict) else t
            for t in pipeline]


def apply_pipeline(pipeline: Sequence[Callable], results: dict,
                   idx) -> dict:
    """Run built transforms on one sample dict, under the draw's seed when
    ``idx`` carries one (a :class:`~vistok.datasets.samplers.SeededIndex`),
    as :class:`SeededDatasetMixin` runs a whole ``__getitem__``; with a
    plain ``int`` the transforms draw from the global RNGs as in mmengine.

    A transform returning None (mmcv's "drop this sample") is a
    ``ValueError``: these datasets cannot replace a sample without changing
    the draw.
    """
    if not pipeline:
        return results
    seed = getattr(idx, 'seed', None)
    with (contextlib.nullcontext() if seed is None else seeded_rng(seed)):
        for transform in pipeline:
            results = transform(results)
            if results is None:
                raise ValueError(f'pipeline transform {transform!r} returned '
                                 f'None for index {int(idx)}: token datasets '
                                 f'do not drop samples')
    return results


class SeededDatasetMixin:
    """Run ``__getitem__`` under the draw's seed when the index carries one.

    Put it before the dataset class in the bases, e.g.
    ``class MyDataset(SeededDatasetMixin, BaseDataset)``.
    """

    def __getitem__(self, idx):
        seed = getattr(idx, 'seed', None)
        if seed is None:
            return super().__getitem__(idx)
        with seeded_rng(seed):
            return super().__getitem__(int(idx))


class BaseImageDataset(SeededDatasetMixin, BaseDataset):
    """mmengine ``BaseDataset`` with seeded augmentation and a pipeline built
    from vistok's ``TRANSFORMS``; all vistok map-style image datasets derive
    from it. Constructor arguments are ``BaseDataset``'s.

    Images are **RGB** everywhere in vistok: ``get_data_info`` (or the
    loading transform) provides ``img`` as an ``(H, W, 3)`` ``uint8`` RGB
    array, and :class:`vistok.datasets.transforms.PackInputs` turns it into a
    ``(3, H, W)`` ``uint8`` tensor.
    """

    def __init__(self, *args, pipeline=(), **kwargs):
        super().__init__(*args, pipeline=build_pipeline(pipeline), **kwargs)
