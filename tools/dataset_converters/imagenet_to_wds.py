"""Convert an extracted ImageNet-1k split to webdataset tar shards.

    python tools/dataset_converters/imagenet_to_wds.py IN OUT
        --split {train,val} [--shard-size 1281] [--val-labels CSV]
        [--seed 0] [--workers N]

Input (the standard extracted release): ``IN/train/<wnid>/*.JPEG``; val
either ``IN/val/<wnid>/*.JPEG`` or a flat ``IN/val/*.JPEG`` with
``--val-labels LOC_val_solution.csv`` (Kaggle release: header
``ImageId,PredictionString``, the wnid first in ``PredictionString``).

* Labels: the position of the wnid in the sorted class folders of
  ``IN/train`` (torchvision ``ImageFolder`` order; for a val split without
  ``IN/train``, those of ``IN/val``). The list is saved in the manifest.
* Output: ``OUT/imagenet-{split}-000000.tar``, ... of ``--shard-size``
  samples (the last one shorter). Sample ``<key>`` = the file name without
  extension (unique in ImageNet) has ``<key>.jpg`` (the ORIGINAL file
  bytes, never re-encoded; ``.png`` / ``.webp`` when the content is PNG /
  WebP, e.g. the PNG named ``n02105855_2933.JPEG`` in train), ``<key>.cls``
  (decimal label) and ``<key>.json`` (``wnid``, ``path`` relative to
  ``IN``, ``format``). CMYK and grayscale JPEGs stay as they are: vistok's
  loaders convert them to RGB with PIL when decoding.
* Order: train is a permutation seeded by ``--seed`` (shards mix classes),
  val is sorted by file name. Tar members have fixed metadata, so the same
  input gives byte-identical shards.
* ``OUT/manifest-{split}.json``: split, num_samples, classes, seed,
  shard_size, the ``urls`` pattern, the command line and its folder, and
  per shard its
  name, sample count, sha256 and ``plan_sha256`` (a hash of the keys,
  paths, labels and sizes of the source files it holds).
* Resume: re-running keeps every shard whose file matches the sha256 and
  plan of the manifest and (re)writes the others (``--workers`` processes
  verify / write shards in parallel). A shard is written as ``<name>.tmp``
  and renamed when complete; the manifest is replaced atomically after each
  shard; leftover ``.tmp`` files and shards of the split beyond the plan
  (another ``--shard-size``) are deleted.
* Refused with an error naming the path: an empty split or class folder,
  a file that is not an image, a val label file that misses an image (or
  lists one that is absent), a wnid outside the class list.

It ends by printing the ``urls`` brace pattern and ``num_samples`` to put
in a dataset config (``configs/_base_/datasets/imagenet_256_wds.py``).
"""
import argparse
import csv
import hashlib
import io
import json
import multiprocessing
import os
import os.path as osp
import re
import shlex
import sys
import tarfile

import numpy as np
from PIL import Image, UnidentifiedImageError

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))))

from vistok.datasets.image_folder import IMG_EXTENSIONS  # noqa: E402
from vistok.datasets.tar_shards import MANIFEST_FORMAT  # noqa: E402
from vistok.utils.checkpoint import write_text_atomic  # noqa: E402
from vistok.utils.fileio import sha256_file  # noqa: E402
from vistok.utils.progress import progress  # noqa: E402

FORMAT_VERSION = 1
SHARD_NAME = 'imagenet-{split}-{index:06d}.tar'
MANIFEST_NAME = 'manifest-{split}.json'
TMP_SUFFIX = '.tmp'
#: PIL format -> tar member extension (all in the loaders' image_keys)
MEMBER_EXT = dict(JPEG='jpg', PNG='png', WEBP='webp')
TAR_FILE_MODE = 0o644
CSV_COLUMNS = ('ImageId', 'PredictionString')


def class_folders(folder: str) -> list:
    """Sorted sub-folder names (torchvision ``find_classes`` order)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())


def image_files(folder: str) -> list:
    """Sorted image paths under ``folder`` (recursive, as torchvision's
    ``make_dataset``); any other file is refused."""
    paths = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            path = osp.join(root, name)
            if not name.lower().endswith(IMG_EXTENSIONS):
                raise ValueError(f'{path} is not an image (extensions '
                                 f'{IMG_EXTENSIONS}); remove it')
            paths.append(path)
    return paths


def read_val_labels(csv_path: str) -> dict:
    """``{ImageId: wnid}`` of a Kaggle ``LOC_val_solution.csv``."""
    labels = {}
    with open(csv_path, newline='') as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise ValueError(f'{csv_path}: expected the header '
                             f'{",".join(CSV_COLUMNS)}, got '
                             f'{reader.fieldnames}')
        for row in reader:
            image_id, boxes = row['ImageId'], (row['PredictionString']
                                               or '').split()
            if not boxes:
                raise ValueError(f'{csv_path}: {image_id!r} has an empty '
                                 f'PredictionString')
            if image_id in labels:
                raise ValueError(f'{csv_path}: {image_id!r} is listed twice')
            labels[image_id] = boxes[0]
    return labels


def stem(path: str) -> str:
    return osp.splitext(osp.basename(path))[0]


def scan_split(in_root: str, split: str, val_labels=None):
    """``(classes, layout, samples)``; samples are ``(path, wnid)`` in
    ImageFolder order (train, val folders) or file-name order (flat val)."""
    folder = osp.join(in_root, split)
    if not osp.isdir(folder):
        raise FileNotFoundError(f'{folder} does not exist')
    subdirs = class_folders(folder)
    loose = [e.name for e in os.scandir(folder) if e.is_file()]
    if subdirs and loose:
        raise ValueError(f'{folder} holds both class folders and files '
                         f'(e.g. {sorted(loose)[0]!r}); use one layout')
    train_dir = osp.join(in_root, 'train')
    if not subdirs and not osp.isdir(train_dir):
        raise FileNotFoundError(f'{folder} is flat: the class list comes '
                                f'from {train_dir}, which does not exist')
    classes_dir = (train_dir if split == 'train' or osp.isdir(train_dir)
                   else folder)
    classes = class_folders(classes_dir)
    if not classes:
        raise ValueError(f'{classes_dir} has no class folders: empty split '
                         f'or no class list')
    if subdirs:
        if val_labels is not None:
            raise ValueError(f'--val-labels {val_labels} given, but {folder} '
                             f'has class folders that give the labels')
        samples = []
        for wnid in subdirs:
            paths = image_files(osp.join(folder, wnid))
            if not paths:
                raise ValueError(f'{osp.join(folder, wnid)} holds no image')
            samples += [(p, wnid) for p in paths]
        return classes, 'class-folders', samples
    paths = image_files(folder)
    if not paths:
        raise ValueError(f'{folder} holds no image: empty split')
    if val_labels is None:
        raise ValueError(f'{folder} is a flat folder: pass --val-labels '
                         f'(LOC_val_solution.csv) to label it')
    labels = read_val_labels(val_labels)
    unlabelled = [p for p in paths if stem(p) not in labels]
    if unlabelled:
        raise ValueError(f'{val_labels} has no label for {unlabelled[0]} '
                         f'({len(unlabelled)} images unlabelled)')
    absent = sorted(labels.keys() - {stem(p) for p in paths})
    if absent:
        raise ValueError(f'{val_labels} lists {absent[0]!r} but {folder} '
                         f'has no such image ({len(absent)} missing)')
    return classes, 'flat+labels', [(p, labels[stem(p)]) for p in paths]


def plan_samples(in_root: str, split: str, classes: list, samples: list,
                 seed: int) -> list:
    """Sample records in shard order: dicts with ``key``, ``path``
    (relative to ``in_root``), ``wnid``, ``label`` and ``size``."""
    label_of = {wnid: i for i, wnid in enumerate(classes)}
    records, owner = [], {}
    for path, wnid in samples:
        if wnid not in label_of:
            raise ValueError(f'{path}: wnid {wnid!r} is not in the '
                             f'{len(classes)} classes of '
                             f'{osp.join(in_root, "train")}')
        key = stem(path)
        if '.' in key or key in owner:
            raise ValueError(f'{path}: its name {key!r} cannot be a unique '
                             'webdataset key (it contains a dot or is also '
                             f'the name of {owner.get(key)})')
        owner[key] = path
        records.append(dict(key=key, path=osp.relpath(path, in_root),
                            wnid=wnid, label=label_of[wnid],
                            size=osp.getsize(path)))
    if split == 'train':
        order = np.random.default_rng(seed).permutation(len(records))
        return [records[i] for i in order]
    return sorted(records, key=lambda r: osp.basename(r['path']))


def plan_sha256(records: list) -> str:
    fields = [[r['key'], r['path'], r['label'], r['size']] for r in records]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, TAR_FILE_MODE
    tar.addfile(info, io.BytesIO(data))


def member_ext(data: bytes, path: str) -> tuple:
    """``(extension, PIL format)`` of encoded image bytes."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f'{path} is not a readable image: {err}') from None
    if fmt not in MEMBER_EXT:
        raise ValueError(f'{path} is a {fmt} image; only '
                         f'{sorted(MEMBER_EXT)} are stored')
    return MEMBER_EXT[fmt], fmt


def write_shard(in_root: str, path: str, records: list) -> str:
    """Write ``records`` to ``path`` via ``path + '.tmp'``; returns the
    sha256 of the shard."""
    tmp = path + TMP_SUFFIX
    with open(tmp, 'wb') as f:
        with tarfile.open(fileobj=f, mode='w',
                          format=tarfile.USTAR_FORMAT) as tar:
            for r in records:
                source = osp.join(in_root, r['path'])
                with open(source, 'rb') as src:
                    data = src.read()
                ext, fmt = member_ext(data, source)
                meta = dict(wnid=r['wnid'], path=r['path'], format=fmt)
                _add_member(tar, f'{r["key"]}.{ext}', data)
                _add_member(tar, f'{r["key"]}.cls', str(r['label']).encode())
                _add_member(tar, f'{r["key"]}.json',
                            json.dumps(meta, sort_keys=True).encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return sha256_file(path)


def ensure_shard(job: dict) -> dict:
    """Keep the shard when it matches its previous manifest entry, else
    write it; returns its manifest entry plus ``kept``."""
    path, old = job['path'], job['old']
    if old is not None and osp.isfile(path) and sha256_file(
            path) == old['sha256']:
        return dict(old, kept=True)
    sha = write_shard(job['in_root'], path, job['records'])
    return dict(name=osp.basename(path), num_samples=len(job['records']),
                sha256=sha, plan_sha256=job['plan_sha256'], kept=False)


def load_old_entries(manifest_path: str) -> dict:
    """``{shard name: entry}`` of a previous run's manifest (none when it
    is absent or unreadable: then every shard is rewritten)."""
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        return {s['name']: s for s in manifest['shards']}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def remove_stale(out: str, split: str, names: set) -> None:
    """Delete leftover ``.tmp`` files and shards of this split that the
    plan does not have (e.g. from another ``--shard-size``)."""
    pattern = re.compile(rf'^imagenet-{split}-\d{{6}}\.tar({TMP_SUFFIX})?$')
    for name in sorted(os.listdir(out)):
        if pattern.match(name) and name not in names:
            os.remove(osp.join(out, name))
            print(f'removed stale {osp.join(out, name)}')


def urls_pattern(split: str, num_shards: int) -> str:
    return (f'imagenet-{split}-{{{0:06d}..{num_shards - 1:06d}}}.tar')


def convert(in_root: str, out: str, split: str, shard_size: int = 1281,
            val_labels=None, seed: int = 0, workers: int = 1,
            command: str = '') -> dict:
    """Convert (or resume converting) one split; returns the manifest."""
    if split == 'train' and val_labels is not None:
        raise ValueError(f'--val-labels {val_labels} applies to --split val '
                         f'only')
    if shard_size < 1 or workers < 1:
        raise ValueError(f'--shard-size ({shard_size}) and --workers '
                         f'({workers}) must be positive')
    classes, layout, samples = scan_split(in_root, split, val_labels)
    records = plan_samples(in_root, split, classes, samples, seed)
    os.makedirs(out, exist_ok=True)
    manifest_path = osp.join(out, MANIFEST_NAME.format(split=split))
    old = load_old_entries(manifest_path)
    jobs = []
    for k, start in enumerate(range(0, len(records), shard_size)):
        part = records[start:start + shard_size]
        name = SHARD_NAME.format(split=split, index=k)
        plan = plan_sha256(part)
        previous = old.get(name)
        jobs.append(dict(in_root=in_root, path=osp.join(out, name),
                         records=part, plan_sha256=plan,
                         old=previous if previous and previous.get(
                             'plan_sha256') == plan else None))
    remove_stale(out, split, {osp.basename(j['path']) for j in jobs})
    manifest = dict(format=MANIFEST_FORMAT, format_version=FORMAT_VERSION,
                    split=split, layout=layout, num_samples=len(records),
                    classes=classes, seed=seed, shard_size=shard_size,
                    urls=urls_pattern(split, len(jobs)), command=command,
                    cwd=os.getcwd(),
                    shards=[j['old'] for j in jobs if j['old']],
                    complete=False)
    write_text_atomic(json.dumps(manifest, indent=1), manifest_path)
    done = {}
    bar = progress(total=len(records), unit='img', desc=f'{split} shards')
    with multiprocessing.Pool(workers) if workers > 1 else _Serial() as pool:
        for entry in pool.imap_unordered(ensure_shard, jobs):
            kept = entry.pop('kept')
            done[entry['name']] = entry
            bar.write(f'[{len(done)}/{len(jobs)}] '
                      f'{"kept" if kept else "wrote"} {entry["name"]}')
            bar.update(entry['num_samples'])
            manifest['shards'] = [
                done.get(osp.basename(j['path']), j['old']) for j in jobs
                if osp.basename(j['path']) in done or j['old']]
            manifest['complete'] = len(done) == len(jobs)
            write_text_atomic(json.dumps(manifest, indent=1), manifest_path)
    bar.close()
    return manifest


class _Serial:
    """In-process stand-in for ``multiprocessing.Pool`` (``--workers 1``)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap_unordered(func, jobs):
        return map(func, jobs)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('in_root', metavar='IN',
                        help='extracted ImageNet (holds train/ and val/)')
    parser.add_argument('out', metavar='OUT', help='output folder')
    parser.add_argument('--split', required=True, choices=('train', 'val'))
    parser.add_argument('--shard-size', type=int, default=1281,
                        help='samples per shard')
    parser.add_argument('--val-labels', default=None,
                        help='LOC_val_solution.csv for a flat val folder')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the train sample order')
    parser.add_argument('--workers', type=int, default=1,
                        help='processes writing / verifying shards')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv] if argv is None else
                         ['imagenet_to_wds.py', *argv])
    manifest = convert(args.in_root, args.out, args.split, args.shard_size,
                       args.val_labels, args.seed, args.workers, command)
    print(f'{manifest["num_samples"]} samples of {len(manifest["classes"])} '
          f'classes in {len(manifest["shards"])} shards; for a config:')
    print(f"urls = '{osp.join(args.out, manifest['urls'])}'")
    print(f'num_samples = {manifest["num_samples"]}')


if __name__ == '__main__':
    main()
