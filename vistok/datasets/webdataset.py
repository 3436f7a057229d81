"""Streaming images from webdataset tar shards."""
import os.path as osp
import zlib
from typing import Iterator, Optional, Sequence, Union

import numpy as np
from mmengine.dataset import Compose
from mmengine.dist import get_dist_info
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.shardlists import expand_urls
from webdataset.tariterators import tarfile_samples

from vistok.registry import DATASETS
from vistok.utils.rng import seeded_rng
from .base import build_pipeline
from .samplers import draw_seed
from .transforms.loading import read_image_rgb


def shuffle_buffer(samples: Iterator, size: int, rng) -> Iterator:
    """Approximate shuffle of a stream through a buffer of ``size`` items."""
    buffer = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        j = rng.integers(size)
        yield buffer[j]
        buffer[j] = sample
    yield from (buffer[j] for j in rng.permutation(len(buffer)))


@DATASETS.register_module()
class WebDatasetShards(IterableDataset):
    """An ``IterableDataset`` over webdataset tar shards; use it with
    ``sampler=None`` in the dataloader config.

    Each tar sample ``<key>.<ext>`` is decoded to a dict with ``img``
    (``(H, W, 3)`` ``uint8`` **RGB**, from the first of ``image_keys``
    present), ``img_shape`` and ``ori_shape`` (``(H, W)``), ``gt_label``
    (``int`` of the ``label_key`` file, unless ``label_key`` is ``None``),
    ``sample_key`` and ``shard``, then passed through ``pipeline``; samples
    for which the pipeline returns ``None`` are dropped.

    Order. Epoch ``e`` permutes the shard list with ``seed`` and ``e`` (if
    ``shuffle``), gives rank ``r`` of ``W`` the shards ``r::W`` and splits
    those between DataLoader workers the same way; each worker streams its
    shards through a shuffle buffer seeded by ``(seed, e, rank, worker)``.
    Every sample is seen once per epoch; for balanced ranks use a number of
    shards divisible by ``world_size * num_workers`` with equal sizes
    (a worker without a shard stays idle). Augmentation runs under
    :func:`vistok.utils.rng.seeded_rng` with a seed made of ``seed``, the
    epoch, the shard file name and the sample key, so it does not depend on
    the number of ranks or workers.

    Epochs and resume. The stream starts at epoch ``self.epoch`` (0, or
    what :meth:`set_epoch` set: call it before creating the DataLoader
    iterator, as workers copy the dataset then). With ``repeat=True`` the
    stream never ends and moves on to the next epoch by itself (for
    iteration-based training). On resume vistok's ``IterBasedTrainLoop``
    computes the epoch the run was in from the iteration, batch size,
    ``num_samples`` and world size and restarts the stream at its beginning
    (:func:`vistok.engine.loops.restart_stream`; give ``num_samples``):
    no data is read to get there, and the samples of that epoch drawn
    before the interruption are drawn again.

    Args:
        urls: shard paths or URLs, with brace expansion
            (``'data/shard-{000000..000009}.tar'``), several patterns joined
            by ``'::'`` or given as a list.
        pipeline: mmcv-style transforms.
        image_keys: ``;``-separated extensions holding the image.
        label_key: extension holding the class label, or ``None``.
        shuffle: permute shards each epoch and shuffle samples in a buffer.
        shuffle_buffer_size: samples in the shuffle buffer (per worker).
        seed: seed of shard order, shuffle buffer and augmentation.
        repeat: stream epoch after epoch forever.
        num_samples: total number of samples in the shards (all ranks);
            ``len()`` returns it so that loops and loggers can use it.
    """

    def __init__(self,
                 urls: Union[str, Sequence[str]],
                 pipeline=(),
                 image_keys: str = 'jpg;jpeg;png;webp',
                 label_key: Optional[str] = 'cls',
                 shuffle: bool = True,
                 shuffle_buffer_size: int = 1000,
                 seed: int = 0,
                 repeat: bool = False,
                 num_samples: Optional[int] = None):
        patterns = [urls] if isinstance(urls, str) else list(urls)
        self.urls = [u for p in patterns for u in expand_urls(p)]
        if not self.urls:
            raise ValueError(f'WebDatasetShards: no shard in urls={urls!r}')
        self.pipeline = Compose(build_pipeline(pipeline))
        self.image_keys = tuple(image_keys.split(';'))
        self.label_key = label_key
        self.shuffle = shuffle
        self.shuffle_buffer_size = shuffle_buffer_size
        self.seed = seed
        self.repeat = repeat
        self.num_samples = num_samples
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError('WebDatasetShards has no length: pass num_samples')
        return self.num_samples

    def epoch_shards(self, epoch: int, rank: int, world_size: int,
                     worker: int, num_workers: int) -> list:
        """Shards that ``worker`` of ``rank`` streams in ``epoch``."""
        if len(self.urls) < world_size:
            raise ValueError(f'WebDatasetShards: {len(self.urls)} shards '
                             f'cannot feed {world_size} ranks')
        urls = self.urls
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(
                len(urls))
            urls = [urls[i] for i in order]
        return urls[rank::world_size][worker::num_workers]

    def __iter__(self) -> Iterator[dict]:
        rank, world_size = get_dist_info()
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id,
                                                           info.num_workers)
        epoch = self.epoch
        while True:
            shards = self.epoch_shards(epoch, rank, world_size, worker,
                                       num_workers)
            if not shards:
                return
            samples = tarfile_samples([dict(url=url) for url in shards])
            if self.shuffle and self.shuffle_buffer_size > 1:
                rng = np.random.default_rng([self.seed, epoch, rank, worker])
                samples = shuffle_buffer(samples, self.shuffle_buffer_size,
                                         rng)
            for sample in samples:
                results = self._process(sample, epoch)
                if results is not None:
                    yield results
            if not self.repeat:
                return
            epoch += 1

    def _process(self, sample: dict, epoch: int) -> Optional[dict]:
        key, url = sample['__key__'], sample['__url__']
        ext = next((e for e in self.image_keys if e in sample), None)
        if ext is None:
            raise KeyError(f'sample {key!r} of {url!r} has none of the image '
                           f'keys {self.image_keys}; it has {sorted(sample)}')
        try:
            img = read_image_rgb(sample[ext])
        except Exception as err:
            raise OSError(f'cannot decode {key}.{ext} in {url!r}: '
                          f'{err}') from err
        results = dict(img=img, img_shape=img.shape[:2],
                       ori_shape=img.shape[:2], sample_key=key, shard=url)
        if self.label_key is not None:
            if self.label_key not in sample:
                raise KeyError(f'sample {key!r} of {url!r} has no '
                               f'{self.label_key!r} label file')
            results['gt_label'] = int(sample[self.label_key])
        name = f'{osp.basename(url)}/{key}'.encode()
        with seeded_rng(draw_seed(self.seed, epoch, zlib.crc32(name))):
            return self.pipeline(results)
