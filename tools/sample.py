"""Sample class-conditional images with a trained generator (for gFID).

    python tools/sample.py CONFIG CHECKPOINT --num-images N --out OUT.npz
        [--tokenizer-config C --tokenizer-checkpoint K] [--batch-size B]
        [--seed S] [--classes C ...] [--cfg-options k=v ...]
        [--fid-reference STATS.npz [--feature-extractor k=v ...]]
        [--launcher none|pytorch|slurm] [--rank R --world-size W]
        [--keep-parts] [--overwrite] [--trust-checkpoint] [--device D]

Writes ``OUT.npz`` with ``arr_0``: uint8 RGB images ``(N, H, W, 3)`` and
``arr_1``: their int64 class labels — the layout the evaluation suite of
OpenAI's guided-diffusion (ADM, ``evaluations/evaluator.py``) reads.

* Generator: ``model`` of CONFIG (any vistok generator: ``generate(labels,
  generator=...)`` with the sampler of ``model.sampler``; override it with
  ``--cfg-options model.sampler.guidance_scale=...``), weights from
  CHECKPOINT (a training checkpoint's ``state_dict`` or a ``.safetensors``
  export; for EMA weights export them with
  ``tools/model_converters/export_safetensors.py --ema``). ``init_weights()``
  runs before the weights are loaded, so frozen parts are filled from their
  files; a generator with an unset ``model.quantizer_weights`` (VAR) gets
  the tokenizer checkpoint.
* Tokenizer: ``--tokenizer-config`` / ``--tokenizer-checkpoint``, or the
  generator config's ``tokenizer = dict(config=..., checkpoint=...)``; the
  tokens are decoded with :func:`vistok.apis.tokenize.detokenize`.
* Labels: image ``i`` gets class ``i % num_classes`` (or ``classes[i %
  len(classes)]`` with ``--classes``): balanced classes, as ADM's 50k
  samples.
* Chunks: images ``[c·B, (c+1)·B)`` form chunk ``c``, sampled with a
  ``torch.Generator`` seeded ``seed + c``. A chunk therefore does not depend
  on which process draws it or when, so resumed and distributed runs give
  the very same images (same hardware and software assumed).
* Ranks: rank ``r`` of ``W`` draws chunks ``r, r + W, ...``
  (``--launcher pytorch`` under torchrun, ``--launcher slurm`` under srun,
  or independent jobs such as a SLURM array with ``--rank`` /
  ``--world-size``). Each chunk is written
  atomically (temporary file, then rename) to
  ``OUT.parts/chunk_XXXXXX.npz``; rank 0 merges them into ``OUT.npz``
  once every chunk exists (after a barrier under torchrun; independent
  jobs: re-run rank 0, or any single process, when the others are done)
  and then deletes ``OUT.parts`` unless ``--keep-parts``.
* Resume: re-running the same command keeps every complete chunk and draws
  the missing ones; ``OUT.parts/manifest.json`` records the generator and
  tokenizer configs and checkpoints (SHA-256), the image count, batch size,
  seed and classes, and a run that differs is refused. An existing
  ``OUT.npz`` is refused unless ``--overwrite`` (which also discards the
  parts). Files are written byte-reproducibly (fixed zip timestamps).
* FID: with ``--fid-reference STATS.npz`` (``mu``, ``sigma`` of reference
  features) rank 0 scores ``OUT.npz`` with vistok's
  ``FrechetInceptionDistance`` and the ``--feature-extractor`` config
  (default ``type=PytorchFIDInception weights_path=...``: pass the local
  Inception file), streaming the images from the file, and prints the FID
  with its protocol fingerprint. Reference statistics must come from the
  same extractor (ADM's ``VIRTUAL_imagenet256_labeled.npz`` holds the
  statistics of TensorFlow's Inception, not of a PyTorch port).
"""
import argparse
import json
import logging
import math
import os
import os.path as osp
import shutil
import sys
import tempfile
import zipfile
from typing import Iterable, Iterator, List, Sequence, Tuple

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402
from mmengine.utils import import_modules_from_strings  # noqa: E402
from numpy.lib import format as npy_format  # noqa: E402

from vistok.apis.tokenize import detokenize, load_tokenizer, load_weights  # noqa: E402
from vistok.registry import MODELS  # noqa: E402
from vistok.utils.checkpoint import (  # noqa: E402
    CheckpointLoadError,
    trust_pickled_checkpoints,
)
from vistok.utils.dist import finalize_dist, init_dist  # noqa: E402
from vistok.utils.fileio import config_sha256, sha256_file  # noqa: E402
from vistok.utils.progress import progress  # noqa: E402

#: zip member timestamp (the earliest zip allows): byte-reproducible files
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
MANIFEST = 'manifest.json'
NPY_HEADER_READERS = {
    (1, 0): npy_format.read_array_header_1_0,
    (2, 0): npy_format.read_array_header_2_0,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='generator config file')
    parser.add_argument('checkpoint', help='generator checkpoint (.pth) or '
                        '.safetensors export')
    parser.add_argument('--num-images', type=int, required=True,
                        help='number of images N')
    parser.add_argument('--out', required=True, help='output .npz file')
    parser.add_argument('--tokenizer-config', help='tokenizer config (default:'
                        ' tokenizer.config of the generator config)')
    parser.add_argument('--tokenizer-checkpoint',
                        help='tokenizer checkpoint (default: '
                        'tokenizer.checkpoint of the generator config)')
    parser.add_argument('--batch-size', type=int, default=32,
                        help='images per chunk (one generate call)')
    parser.add_argument('--seed', type=int, default=0,
                        help='chunk c is drawn with seed + c')
    parser.add_argument('--classes', type=int, nargs='+',
                        help='cycle over these class ids instead of all')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override keys of the generator config')
    parser.add_argument('--fid-reference',
                        help='reference statistics .npz (mu, sigma): score '
                        'the samples with FrechetInceptionDistance')
    parser.add_argument('--feature-extractor', nargs='+', action=DictAction,
                        help='FEATURE_EXTRACTORS config of the FID, e.g. '
                        'type=PytorchFIDInception weights_path=pt_inception'
                        '.pth')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'],
                        default='none', help='job launcher')
    parser.add_argument('--rank', type=int, default=0,
                        help='rank of this job (launcher none)')
    parser.add_argument('--world-size', type=int, default=1,
                        help='number of jobs (launcher none)')
    parser.add_argument('--keep-parts', action='store_true',
                        help='keep OUT.parts after merging')
    parser.add_argument('--overwrite', action='store_true',
                        help='discard an existing OUT.npz and OUT.parts')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow loading checkpoints as full pickles; '
                        'this can execute code from the files')
    parser.add_argument('--device', default=None,
                        help='default: cuda (cuda:LOCAL_RANK) if available, '
                        'else cpu')
    args = parser.parse_args(argv)
    for name in ('num_images', 'batch_size', 'world_size'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1')
    if not 0 <= args.rank < args.world_size:
        parser.error(f'--rank must be in [0, --world-size), got {args.rank} '
                     f'of {args.world_size}')
    if args.launcher != 'none' and (args.rank, args.world_size) != (0, 1):
        parser.error('--rank / --world-size are for --launcher none; torchrun'
                     ' / srun set them with --launcher pytorch / slurm')
    if not args.out.endswith('.npz'):
        parser.error(f'--out must end with .npz, got {args.out}')
    if args.feature_extractor and not args.fid_reference:
        parser.error('--feature-extractor needs --fid-reference')
    return args


# --- byte-reproducible .npz files -------------------------------------------
def write_npz(path: str, arrays: Sequence[Tuple[str, np.dtype, tuple,
                                                Iterable[np.ndarray]]]):
    """Write an uncompressed ``.npz`` that ``np.load`` reads, atomically and
    byte-reproducibly (fixed member timestamps). Each entry is ``(name,
    dtype, shape, blocks)``; the C-order ``blocks`` are streamed one after
    the other, so an array larger than memory can be written."""
    directory = osp.dirname(osp.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix='.tmp', prefix=osp.basename(path),
                               dir=directory)
    try:
        with os.fdopen(fd, 'wb') as f, zipfile.ZipFile(
                f, 'w', zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, dtype, shape, blocks in arrays:
                dtype = np.dtype(dtype)
                info = zipfile.ZipInfo(f'{name}.npy', ZIP_DATE_TIME)
                with archive.open(info, 'w', force_zip64=True) as member:
                    npy_format.write_array_header_1_0(
                        member,
                        dict(descr=npy_format.dtype_to_descr(dtype),
                             fortran_order=False, shape=tuple(shape)))
                    written = 0
                    for block in blocks:
                        block = np.ascontiguousarray(block, dtype=dtype)
                        member.write(block.data)
                        written += block.size
                    if written != math.prod(shape):
                        raise ValueError(f'{name}: {written} values written '
                                         f'for shape {tuple(shape)}')
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def iter_npz_rows(path: str, name: str, rows: int) -> Iterator[np.ndarray]:
    """Blocks of ``rows`` rows of array ``name`` of an uncompressed ``.npz``
    (as :func:`write_npz` writes), streamed from disk."""
    with zipfile.ZipFile(path) as archive, archive.open(
            f'{name}.npy') as member:
        version = npy_format.read_magic(member)
        if version not in NPY_HEADER_READERS:
            raise ValueError(f'{path}: {name} has .npy format version '
                             f'{version}, not one of '
                             f'{sorted(NPY_HEADER_READERS)}')
        shape, fortran, dtype = NPY_HEADER_READERS[version](member)
        if fortran:
            raise ValueError(f'{path}: {name} is Fortran-ordered')
        row_shape, row_bytes = shape[1:], dtype.itemsize * math.prod(
            shape[1:])
        for start in range(0, shape[0], rows):
            count = min(rows, shape[0] - start)
            data = member.read(count * row_bytes)
            yield np.frombuffer(data, dtype=dtype).reshape(count, *row_shape)


# --- the run's identity and chunks ------------------------------------------
def chunk_labels(chunk: int, batch_size: int, num_images: int,
                 classes: List[int]) -> np.ndarray:
    """Class labels of the images of ``chunk``: ``classes[i % len]``."""
    stop = min(num_images, (chunk + 1) * batch_size)
    index = np.arange(chunk * batch_size, stop)
    return np.asarray(classes, dtype=np.int64)[index % len(classes)]


def chunk_path(parts: str, chunk: int) -> str:
    return osp.join(parts, f'chunk_{chunk:06d}.npz')


def parts_dir(out: str) -> str:
    """``OUT.parts`` next to ``OUT.npz``."""
    return out[:-len('.npz')] + '.parts'


def prepare_parts(parts: str, identity: dict) -> None:
    """Create ``parts`` with its manifest, or check that an existing one
    belongs to this run (``ValueError`` naming the differing fields)."""
    os.makedirs(parts, exist_ok=True)
    path = osp.join(parts, MANIFEST)
    if osp.isfile(path):
        with open(path) as f:
            stored = json.load(f)
        differ = sorted(k for k in set(stored) | set(identity)
                        if stored.get(k) != identity.get(k))
        if differ:
            raise ValueError(
                f'{parts} holds chunks of another run: {differ} differ '
                f'(stored {[stored.get(k) for k in differ]}, now '
                f'{[identity.get(k) for k in differ]}). Use the same '
                f'command, another --out, or --overwrite')
        return
    fd, tmp = tempfile.mkstemp(suffix='.tmp', prefix=MANIFEST, dir=parts)
    with os.fdopen(fd, 'w') as f:
        json.dump(identity, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


# --- models -----------------------------------------------------------------
def tokenizer_files(cfg: Config, args) -> Tuple[str, str]:
    """The tokenizer config and checkpoint: from the command line, else from
    the generator config's ``tokenizer`` dict."""
    from_cfg = cfg.get('tokenizer') or {}
    config = args.tokenizer_config or from_cfg.get('config')
    checkpoint = args.tokenizer_checkpoint or from_cfg.get('checkpoint')
    if not config or not checkpoint:
        raise ValueError(
            'no tokenizer to decode the tokens: pass --tokenizer-config and '
            '--tokenizer-checkpoint, or set tokenizer = dict(config=..., '
            f'checkpoint=...) in {cfg.filename}')
    return config, checkpoint


def load_generator(cfg: Config, checkpoint: str, tokenizer_checkpoint: str,
                   device: torch.device) -> torch.nn.Module:
    """Build ``cfg.model``, run ``init_weights()`` (frozen parts from their
    files; an unset ``quantizer_weights`` becomes the tokenizer checkpoint),
    then load ``checkpoint`` strictly; in eval mode on ``device``."""
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    model = MODELS.build(cfg.model)
    if not callable(getattr(model, 'generate', None)):
        raise TypeError(f'model {type(model).__name__} of {cfg.filename} is '
                        f'not a generator (it has no generate method)')
    if getattr(model, 'quantizer_weights', False) is None:
        model.quantizer_weights = tokenizer_checkpoint
    # mmengine lists every parameter's initialisation at INFO level when no
    # log file is open: keep the console quiet
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    try:
        model.load_state_dict(load_weights(checkpoint), strict=True)
    except RuntimeError as err:
        raise CheckpointLoadError(f'checkpoint {checkpoint} does not fit the '
                                  f'model of {cfg.filename}: {err}') from None
    return model.to(device).eval()


@torch.no_grad()
def draw_chunk(model, tokenizer, labels: np.ndarray, seed: int,
               device: torch.device) -> np.ndarray:
    """uint8 images ``(n, H, W, 3)`` for ``labels``, drawn with a generator
    seeded ``seed``."""
    generator = torch.Generator(device=device).manual_seed(seed)
    tokens = model.generate(torch.from_numpy(labels).to(device),
                            generator=generator)
    images = detokenize(tokenizer, tokens)
    return images.permute(0, 2, 3, 1).contiguous().numpy()


def merge_chunks(out: str, parts: str, num_chunks: int, batch_size: int,
                 num_images: int, classes: List[int]) -> None:
    """Stream the chunks into ``out`` (``arr_0`` images, ``arr_1``
    labels), checking each chunk's size and labels."""
    with np.load(chunk_path(parts, 0)) as first:
        image_shape = first['arr_0'].shape[1:]

    def images():
        for chunk in range(num_chunks):
            path = chunk_path(parts, chunk)
            with np.load(path) as data:
                block, labels = data['arr_0'], data['arr_1']
            expected = chunk_labels(chunk, batch_size, num_images, classes)
            if block.shape != (len(expected), *image_shape) or \
                    not np.array_equal(labels, expected):
                raise ValueError(f'{path} holds images {block.shape} / '
                                 f'labels that do not belong to chunk '
                                 f'{chunk} of this run')
            yield block

    write_npz(out, [('arr_0', np.uint8, (num_images, *image_shape),
                     images()),
                    ('arr_1', np.int64, (num_images, ), [
                        chunk_labels(c, batch_size, num_images, classes)
                        for c in range(num_chunks)
                    ])])


def score_fid(out: str, args, device: torch.device) -> dict:
    """FID of ``arr_0`` of ``out`` against ``--fid-reference``."""
    from vistok.evaluation.metrics.fid import FrechetInceptionDistance
    extractor = dict(args.feature_extractor or
                     dict(type='PytorchFIDInception', weights_path=None))
    metric = FrechetInceptionDistance(
        feature_extractor=extractor,
        reference=dict(stats_path=args.fid_reference),
        protocol=dict(samples=osp.basename(out), num_samples=args.num_images))
    for block in iter_npz_rows(out, 'arr_0', args.batch_size):
        images = torch.from_numpy(block.copy()).permute(0, 3, 1, 2)
        metric.process(None, [dict(pred_img=image.to(device))
                              for image in images])
    result = metric.compute_metrics(metric.results)
    print(f'FID {result["fid"]:.4f} of {args.num_images} samples in {out} '
          f'against {args.fid_reference} (FID protocol '
          f'{result["fid_protocol"]})')
    return result


# --- main -------------------------------------------------------------------
def setup_distributed(args) -> Tuple[int, int, torch.device]:
    """``(rank, world_size, device)``; initialises torch.distributed for
    ``--launcher pytorch``."""
    if args.device is not None:
        device = torch.device(args.device)
    elif torch.cuda.is_available():
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
    else:
        device = torch.device('cpu')
    if args.launcher == 'none':
        return args.rank, args.world_size, device
    init_dist(args.launcher, backend='gloo' if device.type == 'cpu' else None)
    return (torch.distributed.get_rank(), torch.distributed.get_world_size(),
            device)


def barrier(args) -> None:
    if args.launcher != 'none':
        torch.distributed.barrier()


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.trust_checkpoint:
        trust_pickled_checkpoints(True)
    rank, world_size, device = setup_distributed(args)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    tokenizer_config, tokenizer_checkpoint = tokenizer_files(cfg, args)
    out, parts = args.out, parts_dir(args.out)
    if rank == 0 and args.overwrite:
        for path in (out, parts):
            if osp.isdir(path):
                shutil.rmtree(path)
            elif osp.exists(path):
                os.remove(path)
    barrier(args)
    if osp.exists(out):
        raise FileExistsError(f'{out} exists: pass --overwrite to sample '
                              f'again, or another --out')

    model = load_generator(cfg, args.checkpoint, tokenizer_checkpoint,
                           device)
    tokenizer = load_tokenizer(tokenizer_config, tokenizer_checkpoint,
                               device=device)
    num_classes = int(model.num_classes)
    classes = list(range(num_classes)) if args.classes is None else \
        list(args.classes)
    if not classes or any(not 0 <= c < num_classes for c in classes):
        raise ValueError(f'--classes must be ids in [0, {num_classes}) of '
                         f'the generator, got {args.classes}')
    identity = dict(
        config_sha256=config_sha256(cfg.model),
        checkpoint_sha256=sha256_file(args.checkpoint),
        tokenizer_config_sha256=config_sha256(
            Config.fromfile(tokenizer_config).model),
        tokenizer_checkpoint_sha256=sha256_file(tokenizer_checkpoint),
        num_images=args.num_images, batch_size=args.batch_size,
        seed=args.seed, classes=classes)
    if rank == 0:
        prepare_parts(parts, identity)
    barrier(args)
    if rank != 0:
        prepare_parts(parts, identity)

    num_chunks = math.ceil(args.num_images / args.batch_size)
    todo = [c for c in range(rank, num_chunks, world_size)
            if not osp.exists(chunk_path(parts, c))]
    if rank == 0 and len(todo) < len(range(rank, num_chunks, world_size)):
        print(f'resuming {parts}: {len(todo)} of this rank\'s chunks to draw')
    bar = progress(total=len(todo), unit='chunk', desc='sample',
                   disable=rank != 0)
    for chunk in todo:
        labels = chunk_labels(chunk, args.batch_size, args.num_images,
                              classes)
        images = draw_chunk(model, tokenizer, labels, args.seed + chunk,
                            device)
        write_npz(chunk_path(parts, chunk),
                  [('arr_0', np.uint8, images.shape, [images]),
                   ('arr_1', np.int64, labels.shape, [labels])])
        bar.update()
    bar.close()
    barrier(args)

    result = dict(out=out, parts=parts, rank=rank, complete=False)
    if rank == 0:
        missing = [c for c in range(num_chunks)
                   if not osp.exists(chunk_path(parts, c))]
        if missing:
            print(f'{len(missing)} chunks of other ranks are missing (e.g. '
                  f'{missing[:5]}); run rank 0 again once they are written '
                  f'to merge {out}')
        else:
            merge_chunks(out, parts, num_chunks, args.batch_size,
                         args.num_images, classes)
            if not args.keep_parts:
                shutil.rmtree(parts)
            print(f'{args.num_images} images written to {out}')
            result['complete'] = True
            if args.fid_reference:
                result.update(score_fid(out, args, device))
    finalize_dist()
    return result


if __name__ == '__main__':
    main()
