"""Crop sampling throughput of the lazy HDF5 EM dataset against reading the
whole volume per sample (TokenUnify's official loaders), on the same file.

Writes a uint8 ``(depth, size, size)`` volume (random bytes, as
incompressible as EM) into a temporary directory twice, chunked and
contiguous, then times ``num`` random crops with
:class:`vistok.datasets.em.EMVolumeDataset` (no pipeline) and ``num_whole``
samples of the official recipe: open the file, read the whole volume,
min-max normalise it, take one random crop. Prints JSON (run by hand)::

    python bench/em_loader.py [--depth 125 --size 1250 --num 200]
"""
import argparse
import json
import os.path as osp
import sys
import tempfile
import time

import h5py
import numpy as np

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from vistok.datasets.em.volume_dataset import EMVolumeDataset  # noqa: E402
from vistok.datasets.samplers import SeededIndex  # noqa: E402


def whole_volume_sample(path: str, key: str, crop, rng) -> np.ndarray:
    """The official loader: read everything, normalise, crop once."""
    with h5py.File(path, 'r') as f:
        volume = f[key][:].astype(np.float32)
    volume = (volume - volume.min()) / (volume.max() - volume.min())
    origin = [rng.integers(s - c + 1) for s, c in zip(volume.shape, crop)]
    return volume[tuple(slice(o, o + c) for o, c in zip(origin, crop))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--depth', type=int, default=125)
    parser.add_argument('--size', type=int, default=1250)
    parser.add_argument('--crop', type=int, nargs=3, default=(16, 160, 160))
    parser.add_argument('--chunks', type=int, nargs=3, default=(8, 128, 128))
    parser.add_argument('--num', type=int, default=200)
    parser.add_argument('--num-whole', type=int, default=5)
    args = parser.parse_args()
    shape = (args.depth, args.size, args.size)
    volume = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for layout, chunks in (('chunked', tuple(args.chunks)),
                               ('contiguous', None)):
            path = osp.join(tmp, f'{layout}.h5')
            with h5py.File(path, 'w') as f:
                f.create_dataset('main', data=volume, chunks=chunks)
            dataset = EMVolumeDataset([path], raw_key='main', label_key=None,
                                      crop_size=args.crop,
                                      samples_per_epoch=args.num)
            dataset[SeededIndex(0, 0)]  # open the handle
            start = time.perf_counter()
            for i in range(args.num):
                dataset[SeededIndex(i, i)]
            lazy = (time.perf_counter() - start) / args.num
            rng = np.random.default_rng(0)
            start = time.perf_counter()
            for _ in range(args.num_whole):
                whole_volume_sample(path, 'main', args.crop, rng)
            whole = (time.perf_counter() - start) / args.num_whole
            results.append(dict(
                layout=layout, chunks=chunks, volume=shape,
                crop=tuple(args.crop), lazy_ms_per_crop=1e3 * lazy,
                whole_volume_ms_per_crop=1e3 * whole,
                speedup=whole / lazy))
    print(json.dumps(results, indent=1))


if __name__ == '__main__':
    main()
