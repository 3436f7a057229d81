"""Token shards: a tokenizer's indices of a whole dataset, stored as
webdataset tar shards plus a manifest (written by ``tools/export_tokens.py``,
read by :class:`TokenShardDataset`).

Layout of an export directory::

    manifest.json          described below; replaced atomically
    tokens-000000.tar      samples 0 .. shard_size - 1
    tokens-000001.tar      samples shard_size .. 2 * shard_size - 1, ...

Sample ``i`` (its position in the exported dataset) has the key ``%08d``
and the members ``<key>.indices.npy`` (tensor indices, e.g. ``(h, w)`` or
``(h, w, depth)``) or ``<key>.level0.npy``, ``<key>.level1.npy``, ... (one
per level of list / tuple indices, e.g. the scales of a multi-scale
quantizer), without the batch axis and in the manifest's ``dtype``; plus
``<key>.sample_idx`` and ``<key>.cls`` (decimal text) when the source
sample had a ``sample_idx`` / ``gt_label``. Shards are written to
``<name>.tmp`` and renamed when complete, with fixed tar metadata, so the
same export gives byte-identical shards.

Several processes can write one export (``TokenShardWriter(...,
shared=True)`` on rank 0, :meth:`TokenShardWriter.attach` on the others):
shard ``k`` still holds samples ``k * shard_size ..``, whichever rank
writes it, and next to each shard it writes the rank leaves a *shard
record* ``<name>.json`` (the shard's manifest entry plus its
``structure`` / ``levels`` / ``sequence``, written atomically after the
shard). Rank 0 folds the records into the manifest when every rank is done
(:meth:`TokenShardWriter.finish`) and deletes them, so the finished
directory is the one a single process writes, byte for byte. A resumed
export (any number of processes) keeps every shard whose record or
manifest entry matches its sha256.

``manifest.json`` holds ``format`` / ``format_version``, the provenance
(``config_sha256``: the model config after overrides, dumped as sorted
JSON; ``checkpoint_sha256``; ``dataset_sha256``: the dataset config;
``data``: train / val / test; ``seed`` of the dataset pipeline's random
draws), ``codebook_size`` (every id lies in ``[0, codebook_size)``, the
quantizer's joint vocabulary), ``dtype``, ``structure`` (``'tensor'``,
``'list'`` or ``'tuple'``), ``levels`` (``[{'name', 'shape'}]``, the
per-sample grid / sequence shape of each level), ``num_samples``,
``shard_size``, ``shards`` (the complete shards in order:
``{'name', 'start', 'stop', 'sha256'}``, samples ``start .. stop - 1``) and
``complete``.

Optional fields (``tools/export_tokens.py --flat-sequence / --llm-ids``;
``None`` or absent otherwise, so older manifests stay valid):

* ``token_order``: each sample is one 1-D id sequence (``structure``
  ``'tensor'``, one level of shape ``[L]``) in this order of the quantizer
  (:func:`vistok.models.utils.token_ids.sequence_order`), and
  ``sequence`` = ``{'structure', 'shapes'}`` is the quantizer's own index
  layout per sample, which
  :func:`vistok.models.utils.token_ids.from_token_sequence` needs to undo
  it;
* ``id_map``: the ids are not code ids but ``{'kind': 'llm'}`` LLM
  vocabulary ids, each code mapped through the quantizer's
  ``{'source': 'selected_llm_indices'}`` table of ``num_codes`` entries
  with ``sha256`` (:func:`vistok.models.utils.token_ids.table_sha256`);
  ``codebook_size`` is then the bound of the stored ids (largest LLM id
  of the table + 1).

``token_order`` and ``id_map`` belong to the export's identity: a resumed
export must match them.
"""
import bisect
import hashlib
import io
import json
import math
import os
import os.path as osp
import re
import tarfile
import warnings
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from vistok.registry import DATASETS
from vistok.utils.checkpoint import write_text_atomic
from vistok.utils.fileio import sha256_file
from .base import apply_pipeline, build_pipeline

FORMAT = 'vistok-token-shards'
FORMAT_VERSION = 1
MANIFEST_NAME = 'manifest.json'
SHARD_NAME = 'tokens-{:06d}.tar'
KEY_FORMAT = '{:08d}'
TMP_SUFFIX = '.tmp'
#: suffix of a shard record (``tokens-000003.tar.json``, see above)
RECORD_SUFFIX = '.json'
#: shards, shard records and their partial ``.tmp`` files
SHARD_FILE_RE = re.compile(r'^tokens-(\d{6})\.tar(\.json)?(\.tmp)?$')
STRUCTURES = ('tensor', 'list', 'tuple')
#: manifest fields that must match for a resumed export to continue
IDENTITY_KEYS = ('config_sha256', 'checkpoint_sha256', 'dataset_sha256',
                 'data', 'seed', 'num_samples', 'shard_size',
                 'codebook_size', 'dtype')
#: identity fields that older manifests lack (``None`` when unused)
OPTIONAL_IDENTITY_KEYS = ('token_order', 'id_map')
REQUIRED_KEYS = ('format', 'format_version', *IDENTITY_KEYS, 'structure',
                 'levels', 'shards', 'complete')
#: webdataset extensions of the per-sample metadata
SAMPLE_IDX_EXT = 'sample_idx'
LABEL_EXT = 'cls'
TAR_FILE_MODE = 0o644


def index_dtype(codebook_size: int, signed: bool = False) -> np.dtype:
    """Smallest unsigned integer dtype holding ids ``[0, codebook_size)``
    (``uint8`` up to 256 codes, ``uint16`` up to 65536, else ``uint32``), or
    ``int32`` with ``signed`` (negative ids, e.g. dropped tokens)."""
    candidates = ((np.int32, ) if signed else
                  (np.uint8, np.uint16, np.uint32))
    for dtype in candidates:
        if codebook_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f'codebook_size={codebook_size} does not fit in '
                     f'{np.dtype(candidates[-1]).name}')


def split_indices(indices) -> Tuple[str, List[torch.Tensor]]:
    """``(structure, levels)`` of a batch of indices: ``('tensor',
    [indices])`` for a tensor, ``('list' | 'tuple', list(indices))`` for
    per-level tensors; every level is ``(B, *shape)``."""
    if torch.is_tensor(indices):
        return 'tensor', [indices]
    if isinstance(indices, (list, tuple)) and indices and all(
            torch.is_tensor(level) for level in indices):
        return type(indices).__name__, list(indices)
    raise TypeError(f'indices must be a tensor or a non-empty list / tuple '
                    f'of tensors, got {type(indices).__name__}')


def level_names(structure: str, num_levels: int) -> List[str]:
    """Member names (without ``.npy``) of the levels of a sample."""
    if structure == 'tensor':
        return ['indices']
    return [f'level{k}' for k in range(num_levels)]


def num_shards(manifest: dict) -> int:
    """Number of shards of a complete export."""
    return math.ceil(manifest['num_samples'] / manifest['shard_size'])


def _valid_levels(levels) -> bool:
    """Whether ``levels`` is a non-empty list of ``{'name': str, 'shape':
    [non-negative ints]}``."""
    return isinstance(levels, list) and bool(levels) and all(
        isinstance(level, dict) and isinstance(level.get('name'), str)
        and isinstance(level.get('shape'), list) and all(
            isinstance(s, int) and s >= 0 for s in level['shape'])
        for level in levels)


def _integer_dtype(name) -> Optional[np.dtype]:
    """``np.dtype(name)`` if ``name`` names an integer dtype, else None."""
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError, SyntaxError):
        return None
    return dtype if dtype.kind in 'iu' else None


def load_manifest(data_root: str) -> dict:
    """Read and validate ``data_root/manifest.json``; errors name the
    file."""
    path = osp.join(data_root, MANIFEST_NAME)
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'{path} does not exist: {data_root} is not a token export '
            f'(write one with tools/export_tokens.py)')
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f'{path} is not valid JSON ({err}); re-run '
                         f'tools/export_tokens.py with --overwrite') from None
    if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
        raise ValueError(f'{path} is not a {FORMAT!r} manifest')
    if manifest.get('format_version') != FORMAT_VERSION:
        raise ValueError(f'{path} has format_version '
                         f'{manifest.get("format_version")!r}; this vistok '
                         f'reads version {FORMAT_VERSION}')
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ValueError(f'{path} lacks the fields {missing}')
    size, total = manifest['shard_size'], manifest['num_samples']
    if not (isinstance(size, int) and size >= 1 and isinstance(total, int)
            and total >= 0):
        raise ValueError(f'{path}: shard_size={size!r} must be a positive '
                         f'int and num_samples={total!r} a non-negative int')
    for k, shard in enumerate(manifest['shards']):
        expected = dict(name=SHARD_NAME.format(k), start=k * size,
                        stop=min((k + 1) * size, total))
        if any(shard.get(key) != value for key, value in expected.items()):
            raise ValueError(f'{path}: shard entry {k} is {shard}, expected '
                             f'{expected} and a sha256')
    if manifest['shards'] and (manifest['structure'] not in STRUCTURES
                               or not _valid_levels(manifest['levels'])):
        raise ValueError(f'{path} lists shards but no valid structure / '
                         f'levels: {manifest["structure"]!r}, '
                         f'{manifest["levels"]!r}')
    codebook_size = manifest['codebook_size']
    if not (isinstance(codebook_size, int)
            and not isinstance(codebook_size, bool) and codebook_size >= 1
            and _integer_dtype(manifest['dtype']) is not None):
        raise ValueError(f'{path}: codebook_size={codebook_size!r} must be a '
                         f'positive int and dtype={manifest["dtype"]!r} an '
                         f'integer numpy dtype')
    sequence = manifest.get('sequence')
    if manifest['shards'] and manifest.get('token_order') is not None and (
            not isinstance(sequence, dict)
            or sequence.get('structure') not in STRUCTURES
            or not sequence.get('shapes')):
        raise ValueError(f'{path} stores sequences in token_order '
                         f'{manifest["token_order"]!r} but no valid '
                         f'sequence layout: {sequence!r}')
    return manifest


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _tar_bytes(members: Sequence[Tuple[str, bytes]]) -> bytes:
    """A tar archive of ``members`` with fixed metadata (mtime 0, owner
    0:0, mode 644), so equal content gives equal bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w',
                      format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, TAR_FILE_MODE
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _write_bytes_atomic(data: bytes, path: str) -> None:
    """Write ``path + '.tmp'``, fsync, rename: a crash leaves a ``.tmp``."""
    tmp = path + TMP_SUFFIX
    with open(tmp, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class TokenShardWriter:
    """Writes the shards of one export into ``out_dir``, resuming a previous
    run of the same export.

    On construction: with ``overwrite`` every shard, shard record, leftover
    ``.tmp`` and the manifest are deleted first. If a manifest exists, its
    :data:`IDENTITY_KEYS` must equal ``identity`` (else ``ValueError``:
    tokens of different models / checkpoints / data are never mixed). Every
    shard whose manifest entry or shard record (see the module docstring)
    matches its sha256 is kept; the others are written again, and shard,
    record or ``.tmp`` files that verify nothing are deleted (a crash leaves
    ``.tmp`` files, or a renamed shard that nothing lists yet). Shard files
    without a manifest are refused. The manifest lists the longest run of
    kept shards from shard 0; kept shards after a gap stay recorded in
    their shard records until the gap is written.

    Args:
        out_dir: export directory (created if needed).
        identity: the :data:`IDENTITY_KEYS` of this export.
        overwrite: start from scratch.
        shared: several processes write this export: :meth:`write_shard`
            leaves a shard record next to each shard instead of updating the
            manifest, and :meth:`finish` (on this process, once every
            process is done) folds the records into the manifest. Other
            processes write through :meth:`attach`.
    """

    def __init__(self, out_dir: str, identity: dict, overwrite: bool = False,
                 shared: bool = False):
        missing = [k for k in IDENTITY_KEYS if k not in identity]
        if missing:
            raise ValueError(f'identity lacks the fields {missing}')
        self.out_dir, self.shared = out_dir, shared
        self.manifest_path = osp.join(out_dir, MANIFEST_NAME)
        self.dtype = np.dtype(identity['dtype'])
        #: shard id -> record of the kept / written shards the manifest
        #: does not list yet
        self.recorded = {}
        os.makedirs(out_dir, exist_ok=True)
        if overwrite:
            self._remove_shard_files(keep=())
            if osp.exists(self.manifest_path):
                os.remove(self.manifest_path)
        if osp.isfile(self.manifest_path):
            self.manifest = self._resume(identity)
        elif self._shard_files():
            raise FileExistsError(
                f'{out_dir} holds token shards but no {MANIFEST_NAME}: choose '
                f'a new --out or pass --overwrite')
        else:
            self.manifest = dict(
                format=FORMAT, format_version=FORMAT_VERSION,
                **{k: identity[k] for k in IDENTITY_KEYS},
                **{k: identity.get(k) for k in OPTIONAL_IDENTITY_KEYS},
                structure=None, levels=None, sequence=None, shards=[],
                complete=identity['num_samples'] == 0)
        self._collect_records()
        self._fold_records()
        keep = {shard['name'] for shard in self.manifest['shards']}
        for record in self.recorded.values():
            keep.update((record['name'], record['name'] + RECORD_SUFFIX))
        self._remove_shard_files(keep=keep)
        self._save()

    @classmethod
    def attach(cls, out_dir: str, manifest: dict,
               recorded: dict) -> 'TokenShardWriter':
        """A writer for another process of a ``shared`` export: the
        ``manifest`` and ``recorded`` shards of the writer that rank 0
        constructed (it verified the directory; broadcast them). It writes
        shards and their records, never the manifest."""
        writer = cls.__new__(cls)
        writer.out_dir, writer.shared = out_dir, True
        writer.manifest_path = osp.join(out_dir, MANIFEST_NAME)
        writer.dtype = np.dtype(manifest['dtype'])
        writer.manifest = json.loads(json.dumps(manifest))  # a copy
        writer.recorded = {int(k): v for k, v in recorded.items()}
        return writer

    @property
    def num_shards(self) -> int:
        return num_shards(self.manifest)

    @property
    def next_sample(self) -> int:
        """Position of the first sample not in a listed shard."""
        shards = self.manifest['shards']
        return shards[-1]['stop'] if shards else 0

    def shard_range(self, shard_id: int) -> Tuple[int, int]:
        """``(start, stop)``: shard ``shard_id`` holds samples ``start ..
        stop - 1``."""
        size, total = self.manifest['shard_size'], self.manifest['num_samples']
        return shard_id * size, min((shard_id + 1) * size, total)

    def pending_shards(self) -> Iterator[Tuple[int, int, int]]:
        """``(shard_id, start, stop)`` of the shards still to write, in
        order."""
        for k in range(len(self.manifest['shards']), self.num_shards):
            if k not in self.recorded:
                yield (k, *self.shard_range(k))

    def _shard_files(self) -> List[str]:
        return sorted(name for name in os.listdir(self.out_dir)
                      if SHARD_FILE_RE.match(name))

    def _remove_shard_files(self, keep) -> None:
        for name in self._shard_files():
            if name not in keep:
                os.remove(osp.join(self.out_dir, name))

    def _save(self) -> None:
        write_text_atomic(json.dumps(self.manifest, indent=1),
                          self.manifest_path)

    def _verified(self, shard: dict) -> bool:
        path = osp.join(self.out_dir, shard['name'])
        return osp.isfile(path) and sha256_file(path) == shard['sha256']

    def _resume(self, identity: dict) -> dict:
        manifest = load_manifest(self.out_dir)
        differ = [
            f'{k}: {manifest.get(k)!r} in the manifest, {identity.get(k)!r} '
            f'now' for k in (*IDENTITY_KEYS, *OPTIONAL_IDENTITY_KEYS)
            if manifest.get(k) != identity.get(k)]
        if differ:
            raise ValueError(
                f'{self.manifest_path} belongs to another export ('
                + '; '.join(differ) + '); refusing to mix tokens: choose a '
                'new --out or pass --overwrite')
        kept = []
        for k, shard in enumerate(manifest['shards']):
            if not self._verified(shard):
                warnings.warn(f'{osp.join(self.out_dir, shard["name"])} is '
                              f'missing or does not match its sha256 in the '
                              f'manifest: rewriting it')
                # the verified shards after it move to shard records
                for later in manifest['shards'][k + 1:]:
                    if self._verified(later):
                        self._write_record(dict(
                            later, structure=manifest['structure'],
                            levels=manifest['levels'],
                            sequence=manifest.get('sequence')))
                break
            kept.append(shard)
        manifest['shards'] = kept
        manifest['complete'] = len(kept) == num_shards(manifest)
        return manifest

    def _write_record(self, record: dict) -> None:
        """Write the shard record of ``record['name']`` and remember it."""
        _write_bytes_atomic(
            json.dumps(record, indent=1).encode(),
            osp.join(self.out_dir, record['name'] + RECORD_SUFFIX))
        self.recorded[int(SHARD_FILE_RE.match(record['name']).group(1))] = (
            record)

    def _collect_records(self) -> None:
        """Add the shard records on disk that verify (shard beyond the
        manifest's list, entry as expected, sha256 of the shard) to
        :attr:`recorded`; the others are left for deletion."""
        listed = len(self.manifest['shards'])
        for name in self._shard_files():
            match = SHARD_FILE_RE.match(name)
            shard_id = int(match.group(1))
            if (not match.group(2) or match.group(3) or shard_id < listed
                    or shard_id in self.recorded):
                continue
            path = osp.join(self.out_dir, name)
            try:
                with open(path) as f:
                    record = json.load(f)
            except (ValueError, UnicodeDecodeError):
                record = None
            start, stop = self.shard_range(shard_id)
            expected = dict(name=SHARD_NAME.format(shard_id), start=start,
                            stop=stop)
            if (isinstance(record, dict) and shard_id < self.num_shards
                    and all(record.get(k) == v for k, v in expected.items())
                    and isinstance(record.get('sha256'), str)
                    and self._verified(record)):
                self.recorded[shard_id] = record
            else:
                warnings.warn(f'{path} does not verify its shard: rewriting '
                              f'{expected["name"]}')

    def _fold_records(self) -> None:
        """Move the recorded shards that continue the manifest's list into
        it (checking that they store the export's structure)."""
        shards = self.manifest['shards']
        while len(shards) in self.recorded:
            record = self.recorded.pop(len(shards))
            self._set_layout(record['structure'], record['levels'],
                             record.get('sequence'), record['name'])
            shards.append({k: record[k]
                           for k in ('name', 'start', 'stop', 'sha256')})
        self.manifest['complete'] = len(shards) == self.num_shards

    def _set_layout(self, structure: str, levels: List[dict],
                    sequence: Optional[dict], what: str) -> None:
        """Record the structure, levels and sequence layout of the export at
        its first shard; later shards (``what``) must match them."""
        if self.manifest['structure'] is None:
            self.manifest['structure'], self.manifest['levels'] = (structure,
                                                                   levels)
        if self.manifest.get('sequence') is None and sequence is not None:
            self.manifest['sequence'] = sequence
        layout = (structure, levels, sequence)
        expected = (self.manifest['structure'], self.manifest['levels'],
                    self.manifest.get('sequence'))
        if layout != expected:
            raise ValueError(
                f'{what} stores {structure} indices of levels {levels} '
                f'(sequence layout {sequence}), the export has '
                f'{expected[0]} indices of levels {expected[1]} (sequence '
                f'layout {expected[2]}): every sample must give the same '
                f'token grid (use a fixed-size pipeline)')

    def _remove_folded_records(self) -> None:
        """Delete the shard records of the shards the manifest lists (call
        after :meth:`_save`: until then the records keep them)."""
        for shard in self.manifest['shards']:
            path = osp.join(self.out_dir, shard['name'] + RECORD_SUFFIX)
            if osp.exists(path):
                os.remove(path)

    def _levels_of(self, structure: str, samples: Sequence[dict]) -> list:
        """The ``[{'name', 'shape'}]`` of the samples of one shard, which
        must all have the same shapes."""
        first = samples[0]['levels']
        levels = [dict(name=name, shape=list(level.shape)) for name, level
                  in zip(level_names(structure, len(first)), first)]
        expected = [tuple(level['shape']) for level in levels]
        for sample in samples:
            shapes = [tuple(level.shape) for level in sample['levels']]
            if shapes != expected:
                raise ValueError(
                    f'sample {sample["position"]} has {structure} indices of '
                    f'shapes {shapes}, the export has {structure} indices of '
                    f'shapes {expected}: every sample must give the same '
                    f'token grid (use a fixed-size pipeline)')
        return levels

    def _check_sequence(self, sequence: Optional[dict]) -> Optional[dict]:
        """The index layout of flat sequences as the manifest stores it
        (None without ``token_order``)."""
        flat = self.manifest.get('token_order') is not None
        if flat != (sequence is not None):
            raise ValueError(
                f'the export has token_order '
                f'{self.manifest.get("token_order")!r}: write_shard needs '
                f'a sequence layout exactly when token_order is set, got '
                f'{sequence!r}')
        if not flat:
            return None
        return dict(structure=sequence['structure'],
                    shapes=[list(s) for s in sequence['shapes']])

    def _check_ids(self, array: np.ndarray, position: int) -> None:
        low = np.iinfo(self.dtype).min
        high = self.manifest['codebook_size'] - 1
        if array.size and (array.min() < low or array.max() > high):
            raise ValueError(
                f'sample {position} has ids in [{array.min()}, '
                f'{array.max()}], outside [{low}, {high}] of dtype '
                f'{self.dtype.name} and codebook_size '
                f'{self.manifest["codebook_size"]} (negative ids need '
                f'--signed-ids)')

    def write_shard(self, shard_id: int, structure: str,
                    samples: Sequence[dict],
                    sequence: Optional[dict] = None) -> None:
        """Write shard ``shard_id`` and record it: in the manifest (it must
        be the next pending shard) or, ``shared``, in its shard record (any
        pending shard).

        Args:
            shard_id: index of the shard.
            structure: ``'tensor'``, ``'list'`` or ``'tuple'``.
            samples: one dict per sample of the shard, in order: ``levels``
                (numpy int arrays, no batch axis), ``position`` (index in the
                exported dataset) and optionally ``sample_idx`` /
                ``gt_label`` (ints).
            sequence: when the export has a ``token_order`` (flat
                sequences), the quantizer's layout ``{'structure',
                'shapes'}`` of each sequence (see the module docstring);
                ``None`` otherwise.
        """
        pending = [k for k, _, _ in self.pending_shards()]
        allowed = pending if self.shared else pending[:1]
        if shard_id not in allowed:
            raise ValueError(f'shard {shard_id} is not '
                             f'{"a" if self.shared else "the next"} pending '
                             f'shard (pending: {pending[:5]}...)')
        start, stop = self.shard_range(shard_id)
        positions = [sample['position'] for sample in samples]
        if positions != list(range(start, stop)):
            raise ValueError(f'shard {shard_id} must hold samples {start}..'
                             f'{stop - 1} in order, got {positions[:3]}...')
        name = SHARD_NAME.format(shard_id)
        levels = self._levels_of(structure, samples)
        sequence = self._check_sequence(sequence)
        self._set_layout(structure, levels, sequence, name)
        members = []
        for sample in samples:
            key = KEY_FORMAT.format(sample['position'])
            for level_name, level in zip(
                    [level['name'] for level in levels], sample['levels']):
                self._check_ids(level, sample['position'])
                members.append((f'{key}.{level_name}.npy',
                                _npy_bytes(level.astype(self.dtype))))
            for ext, field in ((SAMPLE_IDX_EXT, 'sample_idx'),
                               (LABEL_EXT, 'gt_label')):
                if sample.get(field) is not None:
                    members.append((f'{key}.{ext}',
                                    str(int(sample[field])).encode()))
        data = _tar_bytes(members)
        _write_bytes_atomic(data, osp.join(self.out_dir, name))
        record = dict(name=name, start=start, stop=stop,
                      sha256=hashlib.sha256(data).hexdigest(),
                      structure=structure, levels=levels, sequence=sequence)
        if self.shared:
            self._write_record(record)
            return
        self.recorded[shard_id] = record
        self._fold_records()
        self._save()
        self._remove_folded_records()

    def finish(self) -> dict:
        """Fold every shard record into the manifest and save it; returns
        the manifest. With ``shared``, call it on the process that
        constructed the writer once every process has written its shards:
        the records of the others are verified (sha256) first. Raises
        ``RuntimeError`` naming the missing shards when the export is not
        complete (the manifest then lists what is done: re-run to
        resume)."""
        self._collect_records()
        self._fold_records()
        self._save()
        self._remove_folded_records()
        if not self.manifest['complete']:
            missing = [SHARD_NAME.format(k)
                       for k, _, _ in self.pending_shards()]
            raise RuntimeError(
                f'{self.out_dir} is incomplete: {len(missing)} shards are '
                f'missing (e.g. {missing[:5]}), a process failed before '
                f'writing them; re-run the same command to write them (the '
                f'kept shards are not recomputed)')
        return self.manifest



@DATASETS.register_module()
class TokenShardDataset(Dataset):
    """Map-style dataset over a token export (see the module docstring).

    ``dataset[i]`` is ``dict(indices=..., sample_idx=...)`` (plus
    ``gt_label`` when exported): ``indices`` has the structure the
    tokenizer's quantizer produced, per sample (no batch axis) and
    ``int64``: a tensor, or a list / tuple of per-level tensors;
    ``sample_idx`` is the source dataset's ``sample_idx`` when exported,
    else the position ``i``. The shard holding ``i`` is read whole into
    memory (one shard cached per process / worker), so read in order or
    with shard-sized locality.

    Args:
        data_root: the export directory.
        verify: check each shard's sha256 against the manifest when it is
            read.
        allow_incomplete: read the complete shards of an unfinished export
            (else ``ValueError``).
        pipeline: transform configs (built with vistok's ``TRANSFORMS``) or
            callables run on each sample dict, under the draw's seed when
            the index is a :class:`~vistok.datasets.SeededIndex` (see
            :func:`vistok.datasets.base.apply_pipeline`); None: the stored
            sample as it is.
    """

    def __init__(self, data_root: str, verify: bool = False,
                 allow_incomplete: bool = False,
                 pipeline: Optional[Sequence[Union[dict, Callable]]] = None):
        self.data_root = data_root
        self.pipeline = build_pipeline(pipeline or ())
        self.verify = verify
        self.manifest = load_manifest(data_root)
        if not (self.manifest['complete'] or allow_incomplete):
            done = self.manifest['shards'][-1]['stop'] if self.manifest[
                'shards'] else 0
            raise ValueError(
                f'{osp.join(data_root, MANIFEST_NAME)}: the export is '
                f'incomplete ({done} of {self.manifest["num_samples"]} '
                f'samples); resume it by re-running tools/export_tokens.py '
                f'with the same arguments, or pass allow_incomplete=True')
        self.shards = self.manifest['shards']
        self._starts = [shard['start'] for shard in self.shards]
        self._cached_shard, self._cached_samples = None, None

    def __len__(self) -> int:
        return self.shards[-1]['stop'] if self.shards else 0

    def __getitem__(self, idx: int) -> dict:
        draw, idx = idx, int(idx)  # a SeededIndex seeds the pipeline
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError(f'index {idx} out of range for {len(self)} '
                             f'samples in {self.data_root}')
        shard_id = bisect.bisect_right(self._starts, idx) - 1
        if shard_id != self._cached_shard:
            self._cached_samples = self.read_shard(shard_id)
            self._cached_shard = shard_id
        sample = self._cached_samples[idx - self._starts[shard_id]]
        levels = [torch.from_numpy(level.astype(np.int64))
                  for level in sample['levels']]
        structure = self.manifest['structure']
        indices = (levels[0] if structure == 'tensor' else
                   list(levels) if structure == 'list' else tuple(levels))
        out = dict(indices=indices, sample_idx=sample.get('sample_idx', idx))
        if 'gt_label' in sample:
            out['gt_label'] = sample['gt_label']
        return apply_pipeline(self.pipeline, out, draw)

    def read_shard(self, shard_id: int) -> List[dict]:
        """The samples of shard ``shard_id`` (``self.shards[shard_id]``), in
        order: dicts of ``levels`` (numpy arrays in the manifest's dtype)
        and, when exported, ``sample_idx`` / ``gt_label``."""
        shard = self.shards[shard_id]
        path = osp.join(self.data_root, shard['name'])
        if not osp.isfile(path):
            raise FileNotFoundError(f'{path} (listed in the manifest) does '
                                    f'not exist')
        with open(path, 'rb') as f:
            data = f.read()
        if (self.verify
                and hashlib.sha256(data).hexdigest() != shard['sha256']):
            raise ValueError(f'{path} does not match its sha256 in '
                             f'{MANIFEST_NAME}: the shard is damaged or was '
                             f'replaced; re-export it')
        members = {}
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode='r') as tar:
                for info in tar.getmembers():
                    members[info.name] = tar.extractfile(info).read()
        except tarfile.TarError as err:
            raise ValueError(f'{path} is not a readable tar file: '
                             f'{err}') from None
        samples = []
        for position in range(shard['start'], shard['stop']):
            key = KEY_FORMAT.format(position)
            sample = dict(levels=[
                self._read_level(path, members, f'{key}.{level["name"]}.npy',
                                 level['shape'], position)
                for level in self.manifest['levels']])
            for ext, field in ((SAMPLE_IDX_EXT, 'sample_idx'),
                               (LABEL_EXT, 'gt_label')):
                if f'{key}.{ext}' in members:
                    sample[field] = self._read_int(
                        path, members[f'{key}.{ext}'], f'{key}.{ext}')
            samples.append(sample)
        return samples

    def _damaged(self, path: str, what: str) -> ValueError:
        return ValueError(f'{path}: {what}; the shard is damaged: re-export '
                          f'it (TokenShardDataset(verify=True) checks each '
                          f'shard against its sha256 in {MANIFEST_NAME})')

    def _read_level(self, path: str, members: dict, name: str, shape,
                    position: int) -> np.ndarray:
        """Member ``name`` of sample ``position``, checked against the
        manifest: its ``dtype``, the level's ``shape`` and the id range
        the writer checked (``[dtype min, codebook_size)``)."""
        if name not in members:
            raise ValueError(f"{path} lacks the member '{name}'")
        try:
            array = np.load(io.BytesIO(members[name]), allow_pickle=False)
        except Exception as err:  # a damaged .npy surfaces as many types
            raise self._damaged(
                path, f'sample {position} ({name}) is not a readable .npy '
                f'array ({type(err).__name__}: {err})') from None
        dtype = np.dtype(self.manifest['dtype'])
        if ((array.dtype.kind, array.dtype.itemsize) !=
                (dtype.kind, dtype.itemsize)
                or list(array.shape) != list(shape)):
            raise self._damaged(
                path, f'sample {position} ({name}) holds {array.dtype} ids '
                f'of shape {list(array.shape)}, the manifest says {dtype} of '
                f'shape {list(shape)}')
        low = np.iinfo(dtype).min
        high = self.manifest['codebook_size'] - 1
        if array.size and (array.min() < low or array.max() > high):
            raise self._damaged(
                path, f'sample {position} ({name}) has ids in '
                f'[{array.min()}, {array.max()}], outside [{low}, {high}] '
                f'of dtype {dtype} and codebook_size '
                f'{self.manifest["codebook_size"]}')
        return array

    def _read_int(self, path: str, data: bytes, name: str) -> int:
        """The decimal integer of member ``name``."""
        try:
            return int(data)
        except ValueError:
            raise self._damaged(
                path, f'member {name} is not a decimal integer: '
                f'{data[:20]!r}') from None
