"""Damaged checkpoint files never load (issue 17, item 5).

Every loader of weights files is fed random bytes, truncated files and
files with one flipped bit: ``load_checkpoint_file`` (also as mmengine's
local loader, i.e. ``Runner.resume`` / ``load_from``),
``load_state_dict_file`` (every ``init_weights`` file),
``load_pretrained`` and ``apis.tokenize.load_weights``.

What is guaranteed, and asserted here:

* random bytes and a valid file cut at any byte raise
  :class:`CheckpointLoadError` naming the file (``load_pretrained``: that
  error), for ``.pth`` and ``.safetensors`` alike;
* one flipped bit anywhere in a zip-format torch file (``torch.save``'s
  default, every file vistok writes) raises that error or loads exactly
  the original objects (a flip in a zip time stamp changes nothing): the
  loader checks each record's CRC-32, which ``torch.load`` does not, so no
  flip can alter a tensor value, a key or a number unnoticed;
* one flipped bit in a safetensors file's length prefix or JSON header
  raises that error or gives the original tensors (same dtypes, shapes and
  values; a flip inside a key's name renames it, which ``load_pretrained``
  refuses with a :class:`PartialLoadError` naming the file). **Not**
  guaranteed: a flip in a safetensors file's tensor bytes, which the
  format has no checksum for, loads as a different value; nothing here
  claims otherwise (legacy pre-zip torch files have no checksum either);
* loading writes nothing: the directory's files (names and bytes) are
  unchanged after every attempt, and ``load_pretrained`` leaves the model
  untouched when it raises.
"""
import os
import os.path as osp
import tempfile

import pytest
import torch
import torch.nn as nn
from _properties import examples, flip_bit
from hypothesis import given
from hypothesis import strategies as st
from mmengine.runner.checkpoint import _load_checkpoint
from safetensors.torch import save_file

import vistok.registry  # noqa: F401  (installs the safe local loader)
from vistok.apis.tokenize import load_weights
from vistok.utils.checkpoint import (
    CheckpointLoadError,
    load_checkpoint_file,
    save_checkpoint_atomic,
)
from vistok.utils.partial_load import PartialLoadError, load_pretrained
from vistok.utils.weights import load_state_dict_file

FORMATS = ('.pth', '.safetensors')
#: a file next to the checkpoint: loading must leave it alone too
NEIGHBOUR = ('notes.txt', b'not a checkpoint\n')


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Conv1d(4, 2, 1))


def _state():
    return {k: v.clone() for k, v in tiny_model().state_dict().items()}


def _file_bytes(suffix: str) -> bytes:
    """A valid file of the tiny model: a vistok training checkpoint (a
    ``state_dict`` plus meta data) or a safetensors export."""
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, 'model' + suffix)
        if suffix == '.pth':
            save_checkpoint_atomic(dict(meta=dict(iter=7, seed=0),
                                        state_dict=_state()), path)
        else:
            save_file(_state(), path, metadata=dict(iter='7'))
        with open(path, 'rb') as f:
            return f.read()


VALID = {suffix: _file_bytes(suffix) for suffix in FORMATS}
STATE = _state()


def _safetensors_header_end() -> int:
    data = VALID['.safetensors']
    return 8 + int.from_bytes(data[:8], 'little')


def same(a, b) -> bool:
    """Deep equality, tensors by dtype, shape and every value."""
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict):
        return (isinstance(b, dict) and a.keys() == b.keys()
                and all(same(a[k], b[k]) for k in a))
    return type(a) is type(b) and a == b


def same_tensors_any_names(a: dict, b: dict) -> bool:
    """The same tensors, whatever their keys (a flip inside a safetensors
    key renames it)."""
    def listing(state):
        return sorted((str(v.dtype), tuple(v.shape), v.numpy().tobytes())
                      for v in state.values())
    return len(a) == len(b) and listing(a) == listing(b)


def snapshot(directory: str) -> dict:
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(osp.join(directory, name), 'rb') as f:
            out[name] = f.read()
    return out


def load_all(path: str, suffix: str):
    """Run every loader on ``path``. Returns ``(name, result or the
    exception)`` per loader, and the model ``load_pretrained`` filled (its
    weights zero before)."""
    model = tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    loaders = dict(
        load_state_dict_file=lambda: load_state_dict_file(
            path, 'checkpoint', 'how to get it'),
        load_weights=lambda: load_weights(path),
        load_pretrained=lambda: load_pretrained(model, path))
    if suffix == '.pth':
        loaders.update(load_checkpoint_file=lambda: load_checkpoint_file(path),
                       mmengine=lambda: _load_checkpoint(path))
    results = {}
    for name, load in loaders.items():
        try:
            results[name] = load()
        except Exception as err:  # judged by the caller
            results[name] = err
    return results, model


def assert_clear_error(err, path: str, loader: str) -> None:
    allowed = ((CheckpointLoadError, PartialLoadError)
               if loader == 'load_pretrained' else (CheckpointLoadError, ))
    assert isinstance(err, Exception), f'{loader} loaded damaged bytes'
    assert isinstance(err, allowed), (
        f'{loader} raised {type(err).__name__}: {err}')
    assert path in str(err), f'{loader}: the error does not name {path}'


def check_damaged(data: bytes, suffix: str, must_fail: bool,
                  same_state) -> None:
    """Write ``data`` as a checkpoint and run every loader: each raises the
    clear error (``must_fail``), or loads what ``same_state`` accepts; the
    directory is unchanged and a failed ``load_pretrained`` left the model
    at zero."""
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, 'iter_100' + suffix)
        with open(path, 'wb') as f:
            f.write(data)
        with open(osp.join(tmp, NEIGHBOUR[0]), 'wb') as f:
            f.write(NEIGHBOUR[1])
        before = snapshot(tmp)
        results, model = load_all(path, suffix)
        assert snapshot(tmp) == before, 'a loader wrote into the directory'
    for loader, result in results.items():
        if isinstance(result, Exception) or must_fail:
            assert_clear_error(result, path, loader)
            if loader == 'load_pretrained':
                assert all(not v.any() for v in model.state_dict().values())
            continue
        if loader == 'load_pretrained':
            assert same(model.state_dict(), STATE)
        elif loader in ('load_checkpoint_file', 'mmengine'):
            assert same(result['state_dict'], STATE)
            assert result['meta'] == dict(iter=7, seed=0)
        else:
            assert same_state(result), f'{loader} loaded altered tensors'


@examples(60)
@given(suffix=st.sampled_from(FORMATS), data=st.binary(max_size=2048))
def test_random_bytes_never_load(suffix, data):
    check_damaged(data, suffix, must_fail=True, same_state=None)


@examples(60)
@given(suffix=st.sampled_from(FORMATS), fraction=st.floats(0, 1,
                                                            exclude_max=True))
def test_a_truncated_file_never_loads(suffix, fraction):
    valid = VALID[suffix]
    check_damaged(valid[:int(fraction * len(valid))], suffix,
                  must_fail=True, same_state=None)


@examples(200)
@given(position=st.integers(0, len(VALID['.pth']) - 1),
       bit=st.integers(0, 7))
def test_a_flipped_bit_in_a_torch_file_is_caught(position, bit):
    """Guaranteed: error or exactly the original objects (CRC-32 of every
    zip record, see the module docstring)."""
    check_damaged(flip_bit(VALID['.pth'], position, bit), '.pth',
                  must_fail=False, same_state=lambda s: same(s, STATE))


@examples(80)
@given(position=st.integers(0, _safetensors_header_end() - 1),
       bit=st.integers(0, 7))
def test_a_flipped_bit_in_a_safetensors_header_is_caught(position, bit):
    """Guaranteed for the length prefix and the JSON header only (the
    tensor bytes have no checksum): error, or the original tensors under
    possibly renamed keys, which ``load_pretrained`` refuses."""
    check_damaged(flip_bit(VALID['.safetensors'], position, bit),
                  '.safetensors', must_fail=False,
                  same_state=lambda s: same_tensors_any_names(s, STATE))


def _zip_directory_records(data: bytes) -> list:
    """Offsets of the central-directory records (``PK\\x01\\x02``) of a
    zip archive."""
    offsets, start = [], 0
    while (start := data.find(b'PK\x01\x02', start)) >= 0:
        offsets.append(start)
        start += 4
    return offsets


def test_a_record_marked_as_a_directory_is_caught():
    """A flip of the MS-DOS directory bit (0x10 of the external attributes,
    38 bytes into a central-directory record) passes every CRC; torch's
    reader then returns no bytes for that record and leaves the tensor's
    memory as it was. Every such flip must raise."""
    valid = VALID['.pth']
    records = _zip_directory_records(valid)
    assert len(records) >= 5  # data.pkl, version, byteorder, the tensors
    for record in records:
        check_damaged(flip_bit(valid, record + 38, 4), '.pth',
                      must_fail=True, same_state=None)


@pytest.mark.parametrize('suffix', FORMATS)
def test_the_valid_files_load_exactly(suffix):
    """The undamaged files load through every loader (so the properties
    above test damage, not a loader that always fails)."""
    check_damaged(VALID[suffix], suffix, must_fail=False,
                  same_state=lambda s: same(s, STATE))
