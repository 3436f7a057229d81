"""Safe checkpoint I/O (DESIGN §6, "Checkpoints").

* **Safe by default.** ``torch.load(weights_only=True)`` never executes code
  from a file. mmengine's training state holds objects that restricted
  unpickling refuses (``HistoryBuffer``, numpy arrays and scalars), so
  :func:`to_safe` turns them into tagged plain dicts of tensors before saving
  and :func:`from_safe` rebuilds them after loading.
* **Trusting a full pickle is an explicit, logged opt-in**
  (:func:`trust_pickled_checkpoints`, ``--trust-checkpoint`` in the tools or
  ``VISTOK_TRUST_CHECKPOINTS=1``), for third-party files made by other code.
* **Atomic writes.** :func:`save_checkpoint_atomic` writes a temporary file in
  the target directory, fsyncs it and renames it over the target, so a crash
  while saving leaves the previous file intact.
* **Damage is detected, not loaded.** A torch file in the zip format
  (``torch.save``'s default since PyTorch 1.6, and every file vistok writes)
  stores a CRC-32 of each record (the pickle, each tensor's bytes), which
  ``torch.load`` does not check: :func:`load_checkpoint_file` checks them
  first (:func:`verify_zip_records`), so a damaged byte anywhere in such a
  file raises instead of loading altered keys or tensor values (CRC-32
  catches every error burst of up to 32 bits, any other damage with
  probability 1 - 2^-32). Files without checksums load as they are: legacy
  (pre-zip) torch files and files saved with
  ``torch.serialization.set_crc32_options(False)``; safetensors files
  (:func:`load_safetensors_file`) have no checksum either, so a damaged
  header raises but damaged tensor bytes cannot be told from real ones.

Every failure raises :class:`CheckpointLoadError` naming the file; loading
never writes anything.
"""
import logging
import os
import os.path as osp
import pickle
import re
import tempfile
import zipfile
from collections import OrderedDict
from typing import BinaryIO, Callable

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, print_log

TAG = '__vistok_type__'
#: first bytes of a zip archive (a torch file in the zip format)
ZIP_MAGIC = b'PK\x03\x04'
#: bytes read at a time when checking a record's CRC-32
_CRC_CHUNK = 1 << 24
#: MS-DOS directory bit of a zip record's external attributes
_DOS_DIRECTORY = 0x10
TRUST_ENV = 'VISTOK_TRUST_CHECKPOINTS'
_trust_pickle = False


class CheckpointLoadError(RuntimeError):
    """A checkpoint file could not be loaded (missing, corrupt, or unsafe)."""


def trust_pickled_checkpoints(trust: bool = True) -> None:
    """Allow (``True``) or forbid full-pickle checkpoint loading for this
    process. Loading a full pickle can run arbitrary code: only do it for
    files you made yourself or obtained from a source you trust."""
    global _trust_pickle
    _trust_pickle = bool(trust)
    if trust:
        print_log('Checkpoint loading trusts full pickles: a malicious file '
                  'can execute code.', logger='current', level=logging.WARNING)


def pickle_trusted() -> bool:
    return _trust_pickle or os.environ.get(TRUST_ENV, '') == '1'


# --- plain-type encoding ----------------------------------------------------
_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.Tensor,
          torch.Size, torch.dtype, torch.device)


def to_safe(obj, path='checkpoint'):
    """Return a copy of ``obj`` made only of types restricted unpickling
    accepts. Raises ``TypeError`` naming the key path of anything else."""
    if isinstance(obj, np.generic):  # before _PLAIN: np.float64 is a float
        return {TAG: 'npscalar', 'dtype': obj.dtype.str, 'value': obj.item()}
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, HistoryBuffer):
        return {TAG: 'HistoryBuffer', 'max_length': obj.max_length,
                'log_history': torch.from_numpy(np.array(obj._log_history)),
                'count_history': torch.from_numpy(
                    np.array(obj._count_history))}
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError(f'{path}: numpy object arrays cannot be saved '
                            'safely')
        return {TAG: 'ndarray', 'data': torch.from_numpy(obj.copy())}
    if isinstance(obj, (set, frozenset)):
        return type(obj)(to_safe(v, f'{path}{{}}') for v in obj)
    if isinstance(obj, OrderedDict):
        return OrderedDict((k, to_safe(v, f'{path}.{k}'))
                           for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: to_safe(v, f'{path}.{k}') for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [to_safe(v, f'{path}[{i}]') for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(
        f'{path} holds a {type(obj).__module__}.{type(obj).__qualname__}, '
        'which a safely loadable checkpoint cannot contain; store it as '
        'tensors / numbers / strings / lists / dicts instead')


def from_safe(obj):
    """Inverse of :func:`to_safe`."""
    if isinstance(obj, dict):
        tag = obj.get(TAG)
        if tag == 'HistoryBuffer':
            return HistoryBuffer(obj['log_history'].numpy(),
                                 obj['count_history'].numpy(),
                                 obj['max_length'])
        if tag == 'ndarray':
            return obj['data'].numpy()
        if tag == 'npscalar':
            return np.dtype(obj['dtype']).type(obj['value'])
        return type(obj)((k, from_safe(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [from_safe(v) for v in obj]
    if isinstance(obj, (tuple, set, frozenset)):
        return type(obj)(from_safe(v) for v in obj)
    return obj


# --- files ------------------------------------------------------------------
def _first_line(err) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else repr(err)


def verify_zip_records(filename: str) -> None:
    """Check the CRC-32 of every record of a zip-format torch file (see the
    module docstring); other files are left to ``torch.load``.

    Raises:
        CheckpointLoadError: the archive is damaged or truncated, or a
            record's bytes do not match their CRC-32 (naming the file and
            the record).
    """
    with open(filename, 'rb') as f:
        if f.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
            return  # a legacy torch file (or garbage: torch.load says so)
    record = None
    try:
        with zipfile.ZipFile(filename) as archive:
            records = archive.infolist()
            if not any(info.CRC for info in records):
                return  # saved with torch.serialization.set_crc32_options
            for record in records:
                if record.is_dir() or record.external_attr & _DOS_DIRECTORY:
                    # torch's reader (miniz) returns no bytes for a
                    # "directory" and keeps the tensor's memory as it was
                    raise zipfile.BadZipFile('a tensor record is marked as '
                                             'a directory')
                with archive.open(record) as stream:  # checks the CRC-32
                    while stream.read(_CRC_CHUNK):
                        pass
    except Exception as err:  # damaged archives surface as many error types
        where = f' (record {record.filename!r})' if record else ''
        raise CheckpointLoadError(
            f'checkpoint {filename} is truncated or corrupt{where}: '
            f'{type(err).__name__}: {_first_line(err)}') from None


def load_checkpoint_file(filename, map_location=None):
    """Load a checkpoint safely and rebuild its tagged objects.

    Raises:
        CheckpointLoadError: missing, truncated / corrupt (for zip-format
            files: any record whose CRC-32 does not match, see
            :func:`verify_zip_records`), or (unless pickles are trusted)
            containing arbitrary pickled objects.
    """
    filename = osp.expanduser(str(filename))
    if not osp.isfile(filename):
        raise CheckpointLoadError(f'checkpoint {filename} does not exist')
    verify_zip_records(filename)
    if pickle_trusted():
        print_log(f'Loading {filename} as a trusted full pickle.',
                  logger='current', level=logging.WARNING)
        return torch.load(filename, map_location=map_location,
                          weights_only=False)
    try:
        checkpoint = torch.load(filename, map_location=map_location,
                                weights_only=True)
    except pickle.UnpicklingError as err:
        detail = re.search(r'WeightsUnpickler error:\s*(.*)', str(err))
        detail = detail.group(1) if detail else _first_line(err)
        trust = (' If you made this file or trust its source, re-run with '
                 f'--trust-checkpoint (or {TRUST_ENV}=1).')
        if 'Unsupported global' in detail:
            raise CheckpointLoadError(
                f'checkpoint {filename} contains pickled Python objects that '
                'safe loading refuses (nothing from it was executed).' + trust
                + f' Details: {detail}') from None
        raise CheckpointLoadError(
            f'checkpoint {filename} is corrupt, or a raw / legacy pickle that '
            'safe loading cannot read (nothing from it was executed).' + trust
            + f' Details: {detail}') from None
    except Exception as err:  # damaged bytes surface as many error types
        raise CheckpointLoadError(
            f'checkpoint {filename} is truncated or corrupt and cannot be '
            f'read ({type(err).__name__}: {_first_line(err)})'
        ) from None
    return from_safe(checkpoint)


def load_safetensors_file(filename) -> dict:
    """The tensors of a ``.safetensors`` file (CPU), or
    :class:`CheckpointLoadError` naming the file when it is missing,
    truncated or its header is damaged (the format has no checksum of the
    tensor bytes: see the module docstring)."""
    from safetensors.torch import load_file
    filename = osp.expanduser(str(filename))
    if not osp.isfile(filename):
        raise CheckpointLoadError(f'checkpoint {filename} does not exist')
    try:
        return load_file(filename)
    except Exception as err:  # SafetensorError, OSError, ...
        raise CheckpointLoadError(
            f'checkpoint {filename} is not a readable safetensors file '
            f'(truncated or corrupt: {type(err).__name__}: '
            f'{_first_line(err)})') from None


def _temporary_file(filename: str, suffix: str = ''):
    """``(fd, path)`` of a new temporary file next to ``filename`` with the
    permissions ``open()`` would give (``mkstemp`` makes files 0600)."""
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(filename) + '.',
                               suffix=suffix,
                               dir=osp.dirname(osp.abspath(filename)))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def write_file_atomic(filename, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary binary file next to ``filename``,
    fsync it and rename it over ``filename`` (then fsync the directory): a
    reader sees the old file or the complete new one, never a part."""
    filename = str(filename)
    directory = osp.dirname(osp.abspath(filename))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = _temporary_file(filename, suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint_atomic(checkpoint, filename) -> None:
    """Write ``checkpoint`` (made safe with :func:`to_safe`) to ``filename``
    through a temporary file and an atomic rename."""
    safe = to_safe(checkpoint)
    write_file_atomic(filename, lambda f: torch.save(safe, f))


def write_text_atomic(text: str, filename) -> None:
    """Replace a small text file (e.g. ``last_checkpoint``) atomically."""
    fd, tmp = _temporary_file(str(filename))
    with os.fdopen(fd, 'w') as f:
        f.write(text)
    os.replace(tmp, filename)
