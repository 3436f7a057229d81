"""Token storage: bytes per image and random-read speed of the SeiT format,
the compact format (order-0 and context models), 9-bit packing and raw
uint16 (run by hand; prints JSON).

    python bench/token_storage.py [--images 2000] [--seed 0]
        [--singles 500] [--batches 50] [--train-iters 300]
        [--config CONFIG --checkpoint CKPT] [--no-tokenizer] [--out FILE]

Two token sets (issue 14, item 5):

* ``zipf``: i.i.d. Zipf tokens, ``p_k`` proportional to ``1 / k ** s``
  (``s`` = 1.0, k = 1 .. 391: SeiT's 391 codes), ``--images`` images of a
  32 x 32 grid, drawn with ``numpy.random.default_rng(--seed)``.
* ``tokenizer``: the tokens of the embedded images of ``--data``
  (``val``) of a trained tiny tokenizer: by default the quick-start demo
  config (``configs/vqvae/vqvae_vq-512_conv-f4_1xb8-2k_shapes-64.py``)
  trained for ``--train-iters`` iterations in a temporary work dir, or an
  already trained one (``--config`` + ``--checkpoint``). Images are
  tokenized with :func:`vistok.apis.tokenize` (as
  ``tools/export_tokens.py``). Codes above 509 cannot be stored in the
  SeiT format: its entry then reports the error, and ``seit_renumbered``
  (when at most 510 distinct codes occur) stores the same content with
  the codes renumbered by frequency rank (:func:`renumber`).

For every format (all files written into one temporary directory):

* ``bytes_per_image``: whole files on disk / images. SeiT: ``data.bin.gz``
  + ``index.npy.gz``; compact: the whole ``.vtok`` file (magic, header,
  model table, lengths, checksums, data); 9-bit packing and raw uint16:
  the ``.npy`` file (header included). Labels are stored by none.
* ``open_ms``: opening the file (SeiT: reading and decompressing both
  files, checking every image's escapes; compact: mapping it and building
  the coder's models).
* ``single_ms``: mean time to read one image, over ``--singles`` random
  indices (the same for every format; one warm-up read first);
  ``batch_ms``: mean time to read ``--batch-size`` random images (the
  library's batch reader where there is one), over ``--batches`` batches.
  The files were just written, so reads hit the page cache.
* ``full_read_s``: reading every image back. Every read (singles, batches,
  the full pass) is compared with the source tokens; any difference aborts
  the bench.

Also: the empirical order-0 entropy of the tokens (``bits_per_token``
from their own code frequencies, and as bytes per image), compact
order-0's overhead over it (model table and header included), and SeiT
decoding speed against a per-byte Python loop decoder (:func:`loop_decode`,
timed on the first ``--loop-images`` images and scaled per byte):
:func:`~vistok.datasets.seit_format.decode_stream` on the whole file, and
on each random batch one ``decode_image`` call on the batch's gathered
bytes (``speedup``) or one call per image as ``SeiTTokenFile[i]`` does
(``per_image_speedup``). The issue's targets on ``zipf`` are recorded with
whether each is met.
"""
import argparse
import datetime
import json
import os
import os.path as osp
import platform
import sys
import tempfile
import time
from importlib import metadata

import numpy as np

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402

from vistok.datasets.compact_format import (  # noqa: E402
    CompactTokenFile,
    write_compact,
)
from vistok.datasets.seit_format import (  # noqa: E402
    NUM_STORABLE_CODES,
    SeiTFormatError,
    SeiTTokenFile,
    decode_image,
    decode_stream,
    write_seit_tokens,
)

DEMO_CONFIG = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                       'configs', 'vqvae',
                       'vqvae_vq-512_conv-f4_1xb8-2k_shapes-64.py')
ZIPF_CODES = 391  # SeiT's released ViT-VQGAN codebook
ZIPF_GRID = (32, 32)
PACK_BITS = 9
# the targets on the Zipf tokens (compact order-0, SeiT decoding)
TARGET_OVERHEAD_PCT = 1.0
TARGET_VS_SEIT = 0.97
TARGET_SINGLE_MS = 0.5
TARGET_DECODE_SPEEDUP = 10.0


class RoundTripError(AssertionError):
    """A format read back other tokens than it was given."""


def check_equal(got, want, what: str) -> None:
    """Abort the bench unless ``got`` equals ``want`` exactly."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or not np.array_equal(got, want):
        raise RoundTripError(
            f'{what}: read back {got.shape} codes that differ from the '
            f'source {want.shape} (first mismatch at flat position '
            f'{_first_mismatch(got, want)})')


def _first_mismatch(got, want):
    if got.shape != want.shape:
        return 'n/a, shapes differ'
    return int(np.flatnonzero(got.reshape(-1) != want.reshape(-1))[0])


# --- token sets --------------------------------------------------------------
def zipf_tokens(num_images: int, grid, num_codes: int, s: float,
                seed: int) -> np.ndarray:
    """``(num_images, *grid)`` i.i.d. codes with ``p_k`` proportional to
    ``1 / k ** s`` for code ``k - 1`` (k = 1 .. num_codes)."""
    p = 1.0 / np.arange(1, num_codes + 1, dtype=np.float64) ** s
    rng = np.random.default_rng(seed)
    return rng.choice(num_codes, size=(num_images, *grid),
                      p=p / p.sum()).astype(np.int64)


def order0_entropy(flat: np.ndarray, codebook_size: int) -> float:
    """Empirical order-0 entropy in bits per token (the tokens' own code
    frequencies)."""
    counts = np.bincount(flat.reshape(-1), minlength=codebook_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


# --- 9-bit packing (fixed size per image, memory-mappable) -------------------
def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """``(n, L)`` codes -> ``(n, ceil(L * bits / 8))`` ``uint8``: each code's
    ``bits`` bits, most significant first, images padded to whole bytes."""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    planes = ((codes[:, :, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(len(codes), -1), axis=1)


def unpack_bits(rows: np.ndarray, bits: int, length: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``(n, B)`` bytes -> ``(n, L)``
    ``int64`` codes."""
    planes = np.unpackbits(np.asarray(rows), axis=1, count=length * bits)
    weights = (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))
    return planes.reshape(len(rows), length, bits).astype(np.int64) @ weights


def write_packed(path: str, flat: np.ndarray, bits: int,
                 chunk: int = 256) -> None:
    if flat.max(initial=0) >= 1 << bits or flat.min(initial=0) < 0:
        raise ValueError(f'{bits}-bit packing stores codes 0..'
                         f'{(1 << bits) - 1}, got codes '
                         f'{int(flat.min())}..{int(flat.max())}')
    parts = []
    for first in range(0, len(flat), chunk):
        codes = flat[first:first + chunk]
        packed = pack_bits(codes, bits)
        check_equal(unpack_bits(packed, bits, flat.shape[1]), codes,
                    f'{bits}-bit packing round trip (images {first}..)')
        parts.append(packed)
    np.save(path, np.concatenate(parts), allow_pickle=False)


# --- the SeiT per-byte loop (the reference the vectorised decoder beats) -----
def loop_decode(data: bytes, index) -> list:
    """Per-byte Python decoder of SeiT escape coding: a list of each
    image's codes (no checks). ``data`` is the byte stream, ``index`` the
    N + 1 offsets."""
    images = []
    for start, stop in zip(index[:-1], index[1:]):
        codes = []
        pos = start
        while pos < stop:
            byte = data[pos]
            if byte == 255:
                codes.append(255 + data[pos + 1])
                pos += 2
            else:
                codes.append(byte)
                pos += 1
        images.append(codes)
    return images


# --- formats -----------------------------------------------------------------
class Format:
    """One storage format: ``write`` the files (returns their paths),
    ``open`` a reader, ``read(reader, i)`` one image's flat codes,
    ``read_batch(reader, idx)`` ``(len(idx), L)`` codes, ``read_all``."""

    def __init__(self, name, write, open_, read, read_batch, read_all):
        self.name = name
        self.write, self.open = write, open_
        self.read, self.read_batch, self.read_all = read, read_batch, read_all


def seit_format():
    def write(tmp, flat, codebook_size, levels):
        data = osp.join(tmp, 'bench-token.data.bin.gz')
        write_seit_tokens(data, flat)
        return [data, data.replace('data.bin', 'index.npy')]

    return Format(
        'seit', write, lambda files: SeiTTokenFile(files[0]),
        lambda f, i: f[i],
        lambda f, idx: np.stack([f[i] for i in idx]),
        lambda f: f.decode_all()[0].reshape(len(f), -1))


def compact_format(model):
    def write(tmp, flat, codebook_size, levels):
        path = osp.join(tmp, f'bench-{model}.vtok')
        structure, spec = levels
        write_compact(path, flat, codebook_size, levels=spec,
                      structure=structure, model=model)
        return [path]

    return Format(
        f'compact_{model}', write, lambda files: CompactTokenFile(files[0]),
        lambda f, i: f[i], lambda f, idx: f.read_batch(idx),
        lambda f: f.read_batch(range(len(f))))


def packed_format(bits=PACK_BITS):
    def write(tmp, flat, codebook_size, levels):
        path = osp.join(tmp, f'bench-packed{bits}.npy')
        write_packed(path, flat, bits)
        return [path]

    def open_(files):
        rows = np.load(files[0], mmap_mode='r')
        # codes per image: an image's padding is under 8 bits (< bits)
        return rows, rows.shape[1] * 8 // bits

    def read_batch(f, idx):
        rows, length = f
        return unpack_bits(rows[np.asarray(idx)], bits, length)

    return Format(
        f'packed_{bits}bit', write, open_,
        lambda f, i: unpack_bits(f[0][i:i + 1], bits, f[1])[0], read_batch,
        lambda f: unpack_bits(f[0], bits, f[1]))


def raw_format():
    def write(tmp, flat, codebook_size, levels):
        path = osp.join(tmp, 'bench-uint16.npy')
        np.save(path, flat.astype(np.uint16), allow_pickle=False)
        return [path]

    return Format(
        'raw_uint16', write, lambda files: np.load(files[0], mmap_mode='r'),
        lambda f, i: f[i].astype(np.int64),
        lambda f, idx: f[np.asarray(idx)].astype(np.int64),
        lambda f: np.asarray(f).astype(np.int64))


FORMATS = ('seit', 'compact_order0', 'compact_context', 'packed_9bit',
           'raw_uint16')


def build_formats():
    return dict(seit=seit_format(),
                compact_order0=compact_format('order0'),
                compact_context=compact_format('context'),
                packed_9bit=packed_format(), raw_uint16=raw_format())


# --- measurements ------------------------------------------------------------
def measure_format(fmt: Format, tmp: str, flat: np.ndarray,
                   codebook_size: int, levels, singles, batches) -> dict:
    """Write, open and read one format; every read is checked."""
    start = time.perf_counter()
    files = fmt.write(tmp, flat, codebook_size, levels)
    write_s = time.perf_counter() - start
    size = sum(osp.getsize(f) for f in files)
    start = time.perf_counter()
    reader = fmt.open(files)
    open_ms = 1e3 * (time.perf_counter() - start)
    check_equal(fmt.read(reader, 0), flat[0], f'{fmt.name} warm-up read')
    got = []
    start = time.perf_counter()
    for i in singles:
        got.append(fmt.read(reader, int(i)))
    single_ms = 1e3 * (time.perf_counter() - start) / len(singles)
    check_equal(np.stack(got), flat[singles], f'{fmt.name} single reads')
    got = []
    start = time.perf_counter()
    for idx in batches:
        got.append(fmt.read_batch(reader, idx))
    batch_ms = 1e3 * (time.perf_counter() - start) / len(batches)
    for idx, batch in zip(batches, got):
        check_equal(batch, flat[idx], f'{fmt.name} batch reads')
    start = time.perf_counter()
    everything = fmt.read_all(reader)
    full_read_s = time.perf_counter() - start
    check_equal(everything, flat, f'{fmt.name} full read')
    return dict(bytes=size, bytes_per_image=size / len(flat),
                bits_per_token=8 * size / flat.size,
                files={osp.basename(f): osp.getsize(f) for f in files},
                write_s=write_s, open_ms=open_ms, single_ms=single_ms,
                batch_ms=batch_ms, full_read_s=full_read_s)


def seit_decoding(files, flat, batches, loop_images: int,
                  repeats: int = 3) -> dict:
    """Vectorised SeiT decoding vs the per-byte loop, per byte (the whole
    file and the loop: best of ``repeats`` runs; batches: mean)."""
    f = SeiTTokenFile(files[0])
    stream, index = f.stream, f.index
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        codes, _ = decode_stream(stream, index, f.token_file)
        times.append(time.perf_counter() - start)
    check_equal(codes, flat.reshape(-1), 'decode_stream of the whole file')
    whole_s = min(times)
    total_bytes = int(index[-1])

    n = min(loop_images, len(flat))
    data = stream[:int(index[n])].tobytes()
    offsets = index[:n + 1].tolist()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        looped = loop_decode(data, offsets)
        times.append(time.perf_counter() - start)
    loop_s = min(times)
    check_equal(np.array(looped), flat[:n], 'per-byte loop decoder')
    loop_s_per_byte = loop_s / len(data)

    # a random batch two ways: SeiTTokenFile's path (one decode_image call
    # per image) and one decode_image call on the batch's gathered bytes
    # (escapes never cross images, so concatenated images decode as one)
    batch_bytes, per_image_s, one_call_s = 0, 0.0, 0.0
    length = flat.shape[1]
    for idx in batches:
        start = time.perf_counter()
        got = [decode_image(stream[index[i]:index[i + 1]], int(i),
                            f.token_file, int(index[i])) for i in idx]
        per_image_s += time.perf_counter() - start
        check_equal(np.stack(got), flat[idx], 'decode_image per image')
        start = time.perf_counter()
        gathered = np.concatenate(
            [stream[index[i]:index[i + 1]] for i in idx])
        got = decode_image(gathered, filename=f.token_file)
        one_call_s += time.perf_counter() - start
        check_equal(got.reshape(len(idx), length), flat[idx],
                    'decode_image of a gathered batch')
        batch_bytes += int((index[idx + 1] - index[idx]).sum())
    loop_batch_s = loop_s_per_byte * batch_bytes
    num = len(batches)
    return dict(
        whole_file=dict(bytes=total_bytes, vectorised_s=whole_s,
                        loop_s_estimated=loop_s_per_byte * total_bytes,
                        speedup=loop_s_per_byte * total_bytes / whole_s),
        batches=dict(batch_size=len(batches[0]), num_batches=num,
                     bytes_per_batch=batch_bytes / num,
                     loop_ms_per_batch_estimated=1e3 * loop_batch_s / num,
                     one_call_ms_per_batch=1e3 * one_call_s / num,
                     speedup=loop_batch_s / one_call_s,
                     per_image_ms_per_batch=1e3 * per_image_s / num,
                     per_image_speedup=loop_batch_s / per_image_s),
        loop=dict(images=n, bytes=len(data), seconds=loop_s,
                  ns_per_byte=1e9 * loop_s_per_byte))


def measure_tokens(name: str, flat: np.ndarray, codebook_size: int, levels,
                   args, rng) -> dict:
    """Every format on one token set ``flat`` ``(N, L)``."""
    n = len(flat)
    singles = rng.integers(0, n, size=args.singles)
    batches = [rng.choice(n, size=args.batch_size,
                          replace=n < args.batch_size)
               for _ in range(args.batches)]
    bits = order0_entropy(flat, codebook_size)
    used = np.unique(flat)
    result = dict(
        name=name, num_images=n, tokens_per_image=flat.shape[1],
        structure=levels[0], levels=levels[1], codebook_size=codebook_size,
        codes_used=int(used.size), max_code=int(used[-1]),
        order0_entropy=dict(bits_per_token=bits,
                            bytes_per_image=bits * flat.shape[1] / 8),
        formats={})
    with tempfile.TemporaryDirectory(prefix='vistok-bench-') as tmp:
        for key, fmt in build_formats().items():
            if key not in args.formats:
                continue
            try:
                result['formats'][key] = measure_format(
                    fmt, tmp, flat, codebook_size, levels, singles, batches)
            except SeiTFormatError as err:
                result['formats'][key] = dict(
                    error=str(err).replace(tmp + os.sep, ''),
                    storable=False,
                    why=f'the SeiT format stores codes 0..'
                    f'{NUM_STORABLE_CODES - 1}; these tokens use '
                    f'{int((used >= NUM_STORABLE_CODES).sum())} distinct '
                    f'codes above {NUM_STORABLE_CODES - 1}')
                if used.size <= NUM_STORABLE_CODES:
                    result['formats']['seit_renumbered'] = dict(
                        measure_format(fmt, tmp,
                                       renumber(flat, codebook_size),
                                       codebook_size, levels, singles,
                                       batches), note=RENUMBER_NOTE)
                continue
            if key == 'seit':
                seit_files = [osp.join(tmp, f)
                              for f in result['formats'][key]['files']]
                result['seit_decoding'] = seit_decoding(
                    seit_files, flat, batches, args.loop_images)
    result['comparisons'] = comparisons(result)
    return result


RENUMBER_NOTE = (
    'the tokens use codes the SeiT format cannot store; here every code is '
    'renumbered by its frequency rank (most frequent -> 0, ties by code): '
    'a permutation of the codebook (its rows permuted alike), so the same '
    'content, stored in the SeiT format')


def renumber(flat: np.ndarray, codebook_size: int) -> np.ndarray:
    """Codes renumbered by descending frequency (ties by code)."""
    counts = np.bincount(flat.reshape(-1), minlength=codebook_size)
    order = np.lexsort((np.arange(codebook_size), -counts))
    rank = np.empty(codebook_size, dtype=np.int64)
    rank[order] = np.arange(codebook_size)
    return rank[flat]


def _bpi(result, key):
    entry = result['formats'].get(key) or {}
    return entry.get('bytes_per_image')


def _ratio(a, b):
    return None if a is None or b is None else a / b


def comparisons(result) -> dict:
    entropy = result['order0_entropy']['bytes_per_image']
    order0 = _bpi(result, 'compact_order0')
    context = _bpi(result, 'compact_context')
    seit = _bpi(result, 'seit')
    renumbered = _bpi(result, 'seit_renumbered')
    return dict(
        compact_order0_overhead_pct=(None if order0 is None
                                     else 100 * (order0 / entropy - 1)),
        compact_order0_vs_seit=_ratio(order0, seit),
        compact_context_vs_seit=_ratio(context, seit),
        compact_order0_vs_seit_renumbered=_ratio(order0, renumbered),
        compact_context_vs_seit_renumbered=_ratio(context, renumbered),
        compact_context_vs_order0=_ratio(context, order0),
        seit_vs_raw_uint16=_ratio(seit, _bpi(result, 'raw_uint16')),
        packed_9bit_vs_raw_uint16=_ratio(_bpi(result, 'packed_9bit'),
                                         _bpi(result, 'raw_uint16')))


def targets(zipf: dict) -> dict:
    """The issue's targets on the Zipf tokens and whether each is met."""
    cmp = zipf['comparisons']
    order0 = zipf['formats'].get('compact_order0', {})
    decoding = zipf.get('seit_decoding', {})

    def target(value, op, bound):
        met = None if value is None else (
            value <= bound if op == '<=' else value >= bound)
        return dict(value=value, target=f'{op} {bound}', met=met)

    return dict(
        compact_order0_overhead_pct=target(
            cmp['compact_order0_overhead_pct'], '<=', TARGET_OVERHEAD_PCT),
        compact_order0_vs_seit=target(cmp['compact_order0_vs_seit'], '<=',
                                      TARGET_VS_SEIT),
        compact_order0_single_ms=target(order0.get('single_ms'), '<=',
                                        TARGET_SINGLE_MS),
        seit_decode_whole_file_speedup=target(
            decoding.get('whole_file', {}).get('speedup'), '>=',
            TARGET_DECODE_SPEEDUP),
        seit_decode_batch_speedup=target(
            decoding.get('batches', {}).get('speedup'), '>=',
            TARGET_DECODE_SPEEDUP))


# --- the tokenizer token set -------------------------------------------------
def tokenizer_tokens(args, tmp: str):
    """``(flat (N, L) codes, codebook_size, (structure, levels), info)``
    of ``--data``'s images, tokenized by a trained tokenizer."""
    from mmengine.config import Config

    from vistok.apis import (
        apply_cli_options,
        build_runner,
        load_tokenizer,
        tokenize,
    )
    from vistok.datasets.token_shards import split_indices
    from vistok.registry import DATASETS

    cfg = Config.fromfile(args.config)
    info = dict(config=osp.relpath(args.config), data=args.data)
    checkpoint = args.checkpoint
    if checkpoint is None:
        work_dir = osp.join(tmp, 'train')
        apply_cli_options(cfg, work_dir=work_dir, seed=args.seed, cfg_options={
            'train_cfg.max_iters': args.train_iters,
            'train_cfg.val_interval': args.train_iters,
            'default_hooks.checkpoint.interval': args.train_iters,
            'default_hooks.logger.interval': args.train_iters,
            'log_level': 'WARNING'})
        start = time.perf_counter()
        build_runner(cfg).train()
        with open(osp.join(work_dir, 'last_checkpoint')) as f:
            checkpoint = f.read().strip()
        info.update(train_iters=args.train_iters,
                    train_s=time.perf_counter() - start)
    else:
        info['checkpoint'] = osp.relpath(checkpoint)
    model = load_tokenizer(cfg, checkpoint)
    key = f'{args.data}_dataloader'
    dataset_cfg = cfg[key]['dataset']
    if args.data_images is not None:
        if 'num_samples' not in dataset_cfg:
            raise KeyError(f'--data-images: {key}.dataset of {args.config} '
                           f'has no num_samples key to override')
        dataset_cfg['num_samples'] = args.data_images
    dataset = DATASETS.build(dataset_cfg)
    chunks, structure = [], None
    for first in range(0, len(dataset), 32):
        images = torch.stack([dataset[i]['inputs'] for i in
                              range(first, min(first + 32, len(dataset)))])
        structure, levels = split_indices(tokenize(model, images))
        chunks.append(np.concatenate(
            [lv.reshape(len(images), -1).numpy() for lv in levels], axis=1))
    names = (['indices'] if structure == 'tensor' else
             [f'level{k}' for k in range(len(levels))])
    spec = [dict(name=nm, shape=list(lv.shape[1:]))
            for nm, lv in zip(names, levels)]
    info['dataset'] = dict(type=dataset_cfg['type'], num_images=len(dataset))
    return (np.concatenate(chunks).astype(np.int64),
            int(model.codebook_size), (structure, spec), info)


def machine_info() -> dict:
    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    return dict(cpu_count=os.cpu_count(),
                affinity=len(os.sched_getaffinity(0))
                if hasattr(os, 'sched_getaffinity') else None,
                torch_threads=torch.get_num_threads(),
                python=platform.python_version(),
                platform=platform.platform(), numpy=np.__version__,
                constriction=version('constriction'), torch=torch.__version__,
                load_average=os.getloadavg() if hasattr(os, 'getloadavg')
                else None)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=2000,
                        help='Zipf images (32 x 32 tokens each)')
    parser.add_argument('--zipf-s', type=float, default=1.0)
    parser.add_argument('--seed', type=int, default=0,
                        help='Zipf tokens, read indices and training seed')
    parser.add_argument('--singles', type=int, default=500,
                        help='random single-image reads per format')
    parser.add_argument('--batches', type=int, default=50,
                        help='random batches per format')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--loop-images', type=int, default=200,
                        help='images the per-byte SeiT loop decodes')
    parser.add_argument('--formats', nargs='+', default=list(FORMATS),
                        choices=FORMATS)
    parser.add_argument('--config', default=DEMO_CONFIG,
                        help='tokenizer config (default: the demo)')
    parser.add_argument('--checkpoint', help='a trained checkpoint of '
                        '--config; default: train it for --train-iters')
    parser.add_argument('--train-iters', type=int, default=300)
    parser.add_argument('--data', default='val', choices=['val', 'test'],
                        help='tokenize <data>_dataloader.dataset')
    parser.add_argument('--data-images', type=int,
                        help='override that dataset\'s num_samples')
    parser.add_argument('--no-tokenizer', action='store_true',
                        help='only the Zipf tokens')
    parser.add_argument('--out', help='also write the JSON to this file')
    args = parser.parse_args(argv)
    for name in ('images', 'singles', 'batches', 'batch_size', 'loop_images',
                 'train_iters'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1')
    return args


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    report = dict(
        bench='token_storage',
        date=datetime.date.today().isoformat(),
        command='python bench/token_storage.py ' + ' '.join(
            sys.argv[1:] if argv is None else argv),
        machine=machine_info(),
        settings=dict(seed=args.seed, singles=args.singles,
                      batches=args.batches, batch_size=args.batch_size,
                      loop_images=args.loop_images, pack_bits=PACK_BITS))
    rng = np.random.default_rng(args.seed)
    tokens = zipf_tokens(args.images, ZIPF_GRID, ZIPF_CODES, args.zipf_s,
                         args.seed)
    levels = ('tensor', [dict(name='indices', shape=list(ZIPF_GRID))])
    zipf = measure_tokens('zipf', tokens.reshape(args.images, -1),
                          ZIPF_CODES, levels, args, rng)
    zipf['source'] = dict(distribution='zipf', s=args.zipf_s,
                          num_codes=ZIPF_CODES, grid=list(ZIPF_GRID),
                          seed=args.seed,
                          rng='numpy.random.default_rng(seed).choice')
    report['zipf'] = zipf
    report['targets'] = targets(zipf)
    if not args.no_tokenizer:
        with tempfile.TemporaryDirectory(prefix='vistok-bench-') as tmp:
            flat, codebook_size, levels, info = tokenizer_tokens(args, tmp)
        result = measure_tokens('tokenizer', flat, codebook_size, levels,
                                args, rng)
        result['source'] = info
        report['tokenizer'] = result
    report['total_s'] = time.perf_counter() - started
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')


if __name__ == '__main__':
    main()
