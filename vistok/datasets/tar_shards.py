"""Map-style access to webdataset tar shards, for exact distributed
evaluation.

Why not :class:`~vistok.datasets.webdataset.WebDatasetShards` for val /
test: an ``IterableDataset`` gives rank ``r`` the shards ``r::W``, so ranks
get unequal sample counts whenever the shard count or sizes do not divide
evenly. mmengine's ``collect_results`` interleaves the rank parts and keeps
the first ``size`` (= ``len(dataset)``) items. The pinned mmengine 0.10
interleaves with ``zip_longest`` (open-mmlab/mmengine#1469, 2024; before it
``zip`` truncated every part to the shortest rank and lost images), so
uneven parts survive only if the ``num_samples`` given to the stream is
exact (too small silently drops images), and the ranks run different numbers
of batches. A map-style dataset under mmengine's ``DefaultSampler`` instead
gives every rank ``ceil(N / W)`` indices (``rank::W`` of ``0 .. N-1`` padded
by wrapping); ``collect_results`` interleaves the parts back into ``0 ..
N-1`` followed by the padding and cuts the padding off, so each image is
evaluated exactly once, in dataset order, for any number of ranks, workers
and batch size.

:class:`TarShardDataset` indexes the tar members at construction (headers
only, with :mod:`tarfile`; the small label members are read) and reads
sample ``i`` by seeking to its image bytes.
"""
import json
import os.path as osp
import tarfile
from typing import List, Optional, Sequence, Union

from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from vistok.registry import DATASETS
from .base import BaseImageDataset
from .transforms.loading import read_image_rgb

#: ``format`` of the manifests of tools/dataset_converters/imagenet_to_wds.py
MANIFEST_FORMAT = 'vistok-imagenet-wds'
#: webdataset skips top-level members named ``__...__`` (shard metadata)
META_AFFIX = '__'


def _is_meta(name: str) -> bool:
    return ('/' not in name and name.startswith(META_AFFIX)
            and name.endswith(META_AFFIX))


def index_tar_shard(path: str, image_keys: Sequence[str],
                    label_key: Optional[str]) -> List[dict]:
    """Samples of one tar shard, grouped by key as webdataset groups them
    (``base_plus_ext``, lower-case extensions, consecutive members).

    Returns one dict per sample, in tar order: ``shard`` (``path``),
    ``sample_key``, ``image_ext``, ``image_offset`` / ``image_size`` (byte
    range of the first of ``image_keys`` present) and ``gt_label`` (``int``
    of the ``label_key`` member, unless ``label_key`` is ``None``).

    Raises:
        ValueError: a key occurs in two separate runs of members, a sample
            has no image or no label member, or a label is not an integer
            (messages name the shard and the key).
    """
    samples, seen = [], set()
    try:
        with tarfile.open(path, mode='r:') as tar:
            for member in tar:
                key, ext = base_plus_ext(member.name)
                if not member.isfile() or key is None or _is_meta(
                        member.name):
                    continue
                if not samples or samples[-1]['key'] != key:
                    if key in seen:
                        raise ValueError(
                            f'{path}: the members of sample {key!r} are not '
                            f'consecutive (webdataset would split it)')
                    seen.add(key)
                    samples.append(dict(key=key, members={}))
                members = samples[-1]['members']
                ext = ext.lower()
                members[ext] = (member.offset_data, member.size)
                if ext == label_key:
                    members[ext] = tar.extractfile(member).read()
    except tarfile.TarError as err:
        raise ValueError(f'{path} is not a readable tar shard: {err}') from err
    return [_sample_info(path, s['key'], s['members'], image_keys, label_key)
            for s in samples]


def _sample_info(path: str, key: str, members: dict,
                 image_keys: Sequence[str], label_key: Optional[str]) -> dict:
    ext = next((e for e in image_keys if e in members), None)
    if ext is None:
        raise ValueError(f'sample {key!r} of {path} has none of the image '
                         f'keys {tuple(image_keys)}; it has {sorted(members)}')
    offset, size = members[ext]
    info = dict(shard=path, sample_key=key, image_ext=ext,
                image_offset=offset, image_size=size)
    if label_key is not None:
        if label_key not in members:
            raise ValueError(f'sample {key!r} of {path} has no '
                             f'{label_key!r} label member')
        try:
            info['gt_label'] = int(members[label_key])
        except ValueError:
            raise ValueError(f'sample {key!r} of {path}: label '
                             f'{members[label_key][:20]!r} is not an '
                             f'integer') from None
    return info


def load_shard_manifest(path: str) -> dict:
    """Read a converter manifest (``manifest-{split}.json`` of
    ``tools/dataset_converters/imagenet_to_wds.py``) and check that it
    describes a complete conversion; errors name the file."""
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'{path} does not exist; write the shards and manifest with '
            f'tools/dataset_converters/imagenet_to_wds.py')
    with open(path) as f:
        try:
            manifest = json.load(f)
        except ValueError as err:
            raise ValueError(f'{path} is not valid JSON: {err}') from None
    if not isinstance(manifest, dict) or manifest.get(
            'format') != MANIFEST_FORMAT:
        raise ValueError(f'{path} is not a {MANIFEST_FORMAT!r} manifest')
    if not manifest.get('complete'):
        raise ValueError(f'{path}: the conversion is incomplete; re-run the '
                         f'command it records ({manifest.get("command")!r}) '
                         f'to finish it')
    return manifest


@DATASETS.register_module()
class TarShardDataset(BaseImageDataset):
    """Webdataset tar shards as a map-style dataset (see the module
    docstring): use it with ``DefaultSampler`` for exact multi-rank
    evaluation.

    Item ``i`` is sample ``i`` in shard-list order: ``img`` (``(H, W, 3)``
    ``uint8`` **RGB**, decoded from the first of ``image_keys`` present),
    ``img_shape`` / ``ori_shape`` (``(H, W)``), ``gt_label`` (from
    ``label_key``), ``sample_key``, ``shard`` and ``sample_idx``, passed
    through ``pipeline`` (the same pipeline as for
    :class:`~vistok.datasets.webdataset.WebDatasetShards`: no loading
    transform). With ``manifest``, the per-shard sample counts must equal
    the manifest's and its ``classes`` become ``metainfo['classes']``.

    Args:
        urls: shard paths with brace expansion
            (``'val-{000000..000039}.tar'``), several patterns joined by
            ``'::'`` or a list; relative paths are joined with ``data_root``.
        manifest: a converter manifest instead of ``urls`` (its shards are
            relative to its folder); relative to ``data_root``.
        data_root: folder of relative ``urls`` / ``manifest``.
        image_keys: ``;``-separated extensions holding the image.
        label_key: extension holding the class label, or ``None``.
        pipeline, test_mode, lazy_init, indices, serialize_data: as in
            ``mmengine.dataset.BaseDataset``.
    """

    def __init__(self,
                 urls: Union[str, Sequence[str], None] = None,
                 manifest: Optional[str] = None,
                 data_root: str = '',
                 image_keys: str = 'jpg;jpeg;png;webp',
                 label_key: Optional[str] = 'cls',
                 pipeline=(),
                 test_mode: bool = False,
                 lazy_init: bool = False,
                 indices=None,
                 serialize_data: bool = True):
        if (urls is None) == (manifest is None):
            raise ValueError('TarShardDataset needs exactly one of urls and '
                             f'manifest (got urls={urls!r}, '
                             f'manifest={manifest!r})')
        self.urls = urls
        self.image_keys = tuple(image_keys.split(';'))
        self.label_key = label_key
        super().__init__(
            ann_file=manifest or '',
            data_root=data_root,
            pipeline=pipeline,
            test_mode=test_mode,
            lazy_init=lazy_init,
            indices=indices,
            serialize_data=serialize_data)

    def _shards(self) -> List[tuple]:
        """``(path, expected sample count or None)`` of every shard."""
        if self.ann_file:
            manifest = load_shard_manifest(self.ann_file)
            self._metainfo['classes'] = tuple(manifest['classes'])
            folder = osp.dirname(self.ann_file)
            return [(osp.join(folder, s['name']), s['num_samples'])
                    for s in manifest['shards']]
        patterns = [self.urls] if isinstance(self.urls, str) else self.urls
        paths = [u for p in patterns for u in expand_urls(p)]
        return [(osp.join(self.data_root, p), None) for p in paths]

    def load_data_list(self) -> List[dict]:
        shards = self._shards()
        if not shards:
            raise ValueError(f'TarShardDataset: no shard in urls='
                             f'{self.urls!r} / manifest={self.ann_file!r}')
        data_list = []
        for path, expected in shards:
            if not osp.isfile(path):
                raise FileNotFoundError(f'TarShardDataset: shard {path} '
                                        f'does not exist')
            samples = index_tar_shard(path, self.image_keys, self.label_key)
            if expected is not None and len(samples) != expected:
                raise ValueError(
                    f'TarShardDataset: {path} holds {len(samples)} samples, '
                    f'its manifest {self.ann_file} says {expected}; re-run '
                    f'the converter to repair it')
            data_list += samples
        return data_list

    def prepare_data(self, idx: int):
        info = self.get_data_info(idx)
        path, size = info['shard'], info['image_size']
        with open(path, 'rb') as f:
            f.seek(info['image_offset'])
            data = f.read(size)
        member = f'{info["sample_key"]}.{info["image_ext"]}'
        if len(data) != size:
            raise OSError(f'{path} is truncated: {member} has {len(data)} of '
                          f'{size} bytes')
        try:
            img = read_image_rgb(data)
        except Exception as err:
            raise OSError(f'cannot decode {member} in {path}: '
                          f'{type(err).__name__}: {err}') from err
        info.update(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2])
        return self.pipeline(info)
