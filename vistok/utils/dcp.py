"""Sharded checkpoints: ``torch.distributed.checkpoint`` (DCP) directories,
written atomically and loaded safely.

A sharded checkpoint is a directory (``iter_N.dcp``) holding

* DCP's files: ``.metadata`` and one ``__<rank>_0.distcp`` per rank with
  that rank's shards. **Only tensors** are stored there: the model's state
  dict (sharded parameters as ``DTensor`` shards, the rest once) under
  ``model.<key>`` and each optimizer's FQN-keyed state under
  ``optimizer.<name>.state.<fqn>.<key>``;
* ``extra_state.pth``: everything else — meta, message hub, scheduler and
  RNG states, the optimizers' param groups — in vistok's safe format
  (:func:`vistok.utils.checkpoint.save_checkpoint_atomic`), tensors of the
  DCP part replaced by :data:`SHARDED`.

DCP can re-shard on load: a checkpoint written by 2 ranks loads into 4
ranks, into 1 process, or into full tensors (:func:`consolidate`).

**Atomic.** All ranks write into ``<name>.partial``; after DCP's final
barrier (its ``.metadata`` is written last, by rank 0) rank 0 adds
``extra_state.pth`` and renames the directory to ``<name>``, then every
rank waits. A crash leaves a ``.partial`` directory, never a directory
that looks complete; :func:`check_complete` still verifies, before any
load, that the metadata parses, that every file it names holds the bytes
it claims and that the extra state loads (a truncated or partial directory
raises :class:`~vistok.utils.checkpoint.CheckpointLoadError`).

**Safe.** Stock DCP unpickles ``.metadata`` with :mod:`pickle` and loads
non-tensor entries with ``torch.load(weights_only=False)``, either of which
runs code from the file. Here ``.metadata`` goes through a restricted
unpickler that admits only DCP's metadata classes (:data:`_ALLOWED`), a
checkpoint with any non-tensor entry is refused before anything is read
(vistok never writes one), the load planner refuses bytes entries
(:class:`SafeLoadPlanner`), and the tensor records are read with
``weights_only=True`` (DCP's own choice in torch 2.14).
"""
import io
import os
import os.path as osp
import pickle
import shutil
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as torch_dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import (
    FileSystemReader,
    FileSystemWriter,
)
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
)

from .checkpoint import (
    CheckpointLoadError,
    load_checkpoint_file,
    save_checkpoint_atomic,
)

#: the non-tensor part of a sharded checkpoint
EXTRA_FILE = 'extra_state.pth'
#: suffix of sharded checkpoint directories
SUFFIX = '.dcp'
#: placeholder of a tensor stored in the DCP part
SHARDED = '__vistok_sharded_tensor__'
_PARTIAL = '.partial'

_DCP_METADATA = 'torch.distributed.checkpoint.metadata'
#: (module, name) pairs the restricted unpickler of ``.metadata`` accepts
_ALLOWED = {
    **{(_DCP_METADATA, name): None for name in (
        'Metadata', 'TensorStorageMetadata', 'BytesStorageMetadata',
        'ChunkStorageMetadata', 'TensorProperties', 'MetadataIndex',
        'StorageMeta', '_MEM_FORMAT_ENCODING')},
    ('torch.distributed.checkpoint.filesystem', '_StorageInfo'): None,
    ('torch', 'Size'): None,
    ('torch.serialization', '_get_layout'): None,
    ('pathlib', 'PosixPath'): None,  # the writer's checkpoint_id
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata``: its dataclasses, ``torch.Size``,
    dtypes, layouts and the path it was written to; any other global is
    refused."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED or (
                module == 'torch'
                and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f'global {module}.{name} is not part of DCP metadata')


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with ``.metadata`` read by a restricted
    unpickler."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        path = osp.join(str(self.path), '.metadata')
        try:
            with open(path, 'rb') as f:
                metadata = _MetadataUnpickler(f).load()
        except FileNotFoundError:
            raise CheckpointLoadError(
                f'sharded checkpoint {self.path} has no .metadata (it was '
                f'not completely written)') from None
        except Exception as err:  # damaged bytes raise many error types
            raise CheckpointLoadError(
                f'sharded checkpoint {self.path}: .metadata is corrupt or '
                f'not DCP metadata, refused without running anything '
                f'({type(err).__name__}: {err})') from None
        if not isinstance(metadata, Metadata):
            raise CheckpointLoadError(
                f'sharded checkpoint {self.path}: .metadata holds a '
                f'{type(metadata).__name__}, not DCP metadata')
        if getattr(metadata, 'storage_meta', None) is not None:
            metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's load planner without unpickling of non-tensor entries."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        raise CheckpointLoadError(
            f'sharded checkpoint entry {read_item.dest_index.fqn!r} is not '
            f'a tensor: vistok keeps non-tensor state in {EXTRA_FILE} and '
            f'does not unpickle DCP entries')


def is_sharded_checkpoint(path) -> bool:
    """Whether ``path`` names a sharded checkpoint (a directory)."""
    return osp.isdir(str(path))


def read_metadata(path) -> Metadata:
    """The validated DCP metadata of ``path`` (see :func:`check_complete`),
    or :class:`CheckpointLoadError`."""
    path = str(path)
    if not osp.isdir(path):
        raise CheckpointLoadError(f'sharded checkpoint {path} does not '
                                  f'exist')
    metadata = SafeFileSystemReader(path).read_metadata()
    bytes_entries = sorted(
        key for key, entry in metadata.state_dict_metadata.items()
        if isinstance(entry, BytesStorageMetadata))
    if bytes_entries:
        raise CheckpointLoadError(
            f'sharded checkpoint {path} has non-tensor entries '
            f'{bytes_entries[:5]}: vistok writes none (non-tensor state is '
            f'in {EXTRA_FILE}) and never unpickles them; refused')
    needed: Dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        end = int(info.offset) + int(info.length)
        needed[info.relative_path] = max(needed.get(info.relative_path, 0),
                                         end)
    for name, end in sorted(needed.items()):
        file = osp.join(path, name)
        if (osp.basename(name) != name or not osp.isfile(file)
                or osp.getsize(file) < end):
            size = osp.getsize(file) if osp.isfile(file) else 'missing'
            raise CheckpointLoadError(
                f'sharded checkpoint {path} is truncated or partial: '
                f'{name} must hold {end} bytes, has {size}')
    return metadata


def check_complete(path) -> dict:
    """Verify the sharded checkpoint ``path`` (metadata, every data file's
    size, the extra state) and return its extra state; raises
    :class:`CheckpointLoadError` naming what is wrong."""
    read_metadata(path)
    extra = osp.join(str(path), EXTRA_FILE)
    if not osp.isfile(extra):
        raise CheckpointLoadError(f'sharded checkpoint {path} has no '
                                  f'{EXTRA_FILE} (it was not completely '
                                  f'written)')
    return load_checkpoint_file(extra, map_location='cpu')


def _map_leaves(node, path: str, leaf):
    """``node`` (nested dicts / lists / tuples) with every leaf replaced by
    ``leaf(value, dotted_path)``."""
    if isinstance(node, dict):
        return type(node)(
            (k, _map_leaves(v, f'{path}.{k}' if path else str(k), leaf))
            for k, v in node.items())
    if isinstance(node, (list, tuple)):
        items = [_map_leaves(v, f'{path}.{i}' if path else str(i), leaf)
                 for i, v in enumerate(node)]
        return items if isinstance(node, list) else tuple(items)
    return leaf(node, path)


def split_tensors(tree, prefix: str = ''
                  ) -> Tuple[object, Dict[str, torch.Tensor]]:
    """``(skeleton, tensors)``: ``tree`` (nested dicts / lists / tuples)
    with every tensor replaced by :data:`SHARDED`, and those tensors by
    dotted key path."""
    tensors: Dict[str, torch.Tensor] = {}

    def take(value, path):
        if isinstance(value, torch.Tensor):
            tensors[path] = value
            return SHARDED
        return value

    return _map_leaves(tree, prefix, take), tensors


def merge_tensors(skeleton, tensors: Dict[str, torch.Tensor],
                  prefix: str = ''):
    """Inverse of :func:`split_tensors`; a placeholder without a tensor is
    a ``KeyError`` naming its path."""
    return _map_leaves(
        skeleton, prefix, lambda value, path: tensors[path]
        if isinstance(value, str) and value == SHARDED else value)


def _barrier() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()


def _rank() -> int:
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_rank()
    return 0


def save_sharded(path, tensors: Dict[str, torch.Tensor], extra: dict
                 ) -> None:
    """Write the sharded checkpoint ``path`` atomically (module docstring):
    ``tensors`` (flat; ``DTensor`` values are written shard by shard) with
    DCP by every rank, ``extra`` (safe types) by rank 0. Every rank of the
    process group must call it with the same keys."""
    path = str(path).rstrip(os.sep)
    partial = path + _PARTIAL
    if _rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
    _barrier()
    dcp.save(tensors, storage_writer=FileSystemWriter(partial))
    if _rank() == 0:  # dcp.save returns after .metadata is written
        save_checkpoint_atomic(extra, osp.join(partial, EXTRA_FILE))
        if osp.isdir(path):
            shutil.rmtree(path)
        os.replace(partial, path)
    _barrier()


def load_sharded(path, targets: Dict[str, torch.Tensor]) -> None:
    """Fill ``targets`` (flat; plain tensors or ``DTensor`` shards of any
    world size) in place from the sharded checkpoint ``path``; every key
    must be in the checkpoint. Every rank of the process group (if any)
    must call it."""
    metadata = read_metadata(path)
    missing = sorted(set(targets) - set(metadata.state_dict_metadata))
    if missing:
        raise CheckpointLoadError(
            f'sharded checkpoint {path} lacks {len(missing)} entries the '
            f'run needs, e.g. {missing[:5]}')
    try:
        dcp.load(targets, storage_reader=SafeFileSystemReader(str(path)),
                 planner=SafeLoadPlanner())
    except CheckpointLoadError:
        raise
    except Exception as err:  # DCP wraps per-rank failures
        raise CheckpointLoadError(
            f'sharded checkpoint {path} could not be read '
            f'({type(err).__name__}: {str(err)[:500]})') from None


def sharded_keys(path, prefix: str = '') -> Dict[str, object]:
    """Tensor entries of the sharded checkpoint ``path`` whose key starts
    with ``prefix``: key → DCP's ``TensorStorageMetadata`` (global size,
    dtype)."""
    metadata = read_metadata(path)
    return {k: v for k, v in metadata.state_dict_metadata.items()
            if k.startswith(prefix)}


def consolidate(path, prefix: str = 'model.',
                keys: Optional[set] = None) -> Dict[str, torch.Tensor]:
    """Full tensors of the sharded checkpoint ``path`` whose key starts with
    ``prefix`` (the prefix removed), in one process: e.g. the model's
    state dict of a run sharded over any number of ranks."""
    entries = sharded_keys(path, prefix)
    if keys is not None:
        entries = {k: v for k, v in entries.items()
                   if k[len(prefix):] in keys}
    full = {key: torch.empty(entry.size, dtype=entry.properties.dtype)
            for key, entry in entries.items()}
    if full:
        load_sharded(path, full)
    return {key[len(prefix):]: value for key, value in full.items()}
