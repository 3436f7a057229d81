import os
import pickle
import signal
import subprocess
import sys
import time
from collections import OrderedDict

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import _load_checkpoint

import vistok.registry  # noqa: F401  (installs the safe local loader)
from _helpers import subprocess_env
from vistok.utils.checkpoint import (
    CheckpointLoadError,
    from_safe,
    load_checkpoint_file,
    save_checkpoint_atomic,
    to_safe,
    trust_pickled_checkpoints,
)
from vistok.utils.rng import get_rng_state, set_rng_state


def training_state():
    buf = HistoryBuffer()
    for v in (1.5, 2.5, 0.25):
        buf.update(v, count=2)
    return dict(
        meta=dict(epoch=1, iter=7, np_int=np.int64(3),
                  np_float=np.float32(0.5), np_double=np.float64(0.25),
                  classes=('a', 'b'), ids={1, 2}),
        message_hub=dict(log_scalars=OrderedDict(loss=buf),
                         runtime_info=dict(arr=np.arange(4.0))),
        state_dict=OrderedDict(w=torch.randn(3, 3)),
        rng_state=get_rng_state())


def test_to_safe_round_trip_through_weights_only_load(tmp_path):
    state = training_state()
    path = tmp_path / 'ckpt.pth'
    save_checkpoint_atomic(state, path)
    loaded = load_checkpoint_file(path)
    buf = loaded['message_hub']['log_scalars']['loss']
    assert isinstance(buf, HistoryBuffer)
    np.testing.assert_array_equal(buf._log_history, [1.5, 2.5, 0.25])
    np.testing.assert_array_equal(buf._count_history, [2, 2, 2])
    assert buf.mean() == state['message_hub']['log_scalars']['loss'].mean()
    assert type(loaded['meta']['np_int']) is np.int64
    assert type(loaded['meta']['np_float']) is np.float32
    assert type(loaded['meta']['np_double']) is np.float64
    assert loaded['meta']['classes'] == ('a', 'b')
    assert loaded['meta']['ids'] == {1, 2}
    np.testing.assert_array_equal(loaded['message_hub']['runtime_info']['arr'],
                                  np.arange(4.0))
    assert torch.equal(loaded['state_dict']['w'], state['state_dict']['w'])
    # mmengine's own loader (used by Runner.resume / load_from) goes through
    # the same safe path
    via_mmengine = _load_checkpoint(str(path), map_location='cpu')
    assert isinstance(via_mmengine['message_hub']['log_scalars']['loss'],
                      HistoryBuffer)


def test_rng_state_round_trip(tmp_path):
    state = get_rng_state()
    expected = (np.random.rand(), torch.rand(2), __import__('random').random())
    save_checkpoint_atomic(dict(rng=state), tmp_path / 'r.pth')
    set_rng_state(load_checkpoint_file(tmp_path / 'r.pth')['rng'])
    got = (np.random.rand(), torch.rand(2), __import__('random').random())
    assert expected[0] == got[0] and expected[2] == got[2]
    assert torch.equal(expected[1], got[1])


def test_unsafe_object_is_refused_at_save_with_its_key_path(tmp_path):
    with pytest.raises(TypeError, match=r'checkpoint\.meta\.bad'):
        to_safe(dict(meta=dict(bad=object())))
    assert from_safe(to_safe([1, (2.0, 'x')])) == [1, (2.0, 'x')]


class Payload:
    """Unpickling this creates a marker file (a stand-in for any code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


@pytest.mark.parametrize('writer', ['torch', 'pickle'])
def test_malicious_pickle_is_not_executed(tmp_path, writer):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    payload = dict(state_dict={}, meta=Payload(str(marker)))
    if writer == 'torch':
        torch.save(payload, path)
    else:
        with open(path, 'wb') as f:
            pickle.dump(payload, f)
    with pytest.raises(CheckpointLoadError,
                       match='evil.pth.*nothing from it was executed'
                       '.*--trust-checkpoint'):
        load_checkpoint_file(path)
    with pytest.raises(CheckpointLoadError):
        _load_checkpoint(str(path))
    assert not marker.exists()


def test_trusting_pickles_is_an_explicit_opt_in(tmp_path):
    path = tmp_path / 'legacy.pth'
    torch.save(dict(meta=dict(fn=os.path.join)), path)
    with pytest.raises(CheckpointLoadError):
        load_checkpoint_file(path)
    trust_pickled_checkpoints(True)
    try:
        assert load_checkpoint_file(path)['meta']['fn'] is os.path.join
    finally:
        trust_pickled_checkpoints(False)


@pytest.mark.parametrize('damage', ['truncate', 'garbage', 'empty'])
def test_corrupt_checkpoint_fails_clearly(tmp_path, damage):
    path = tmp_path / 'iter_4.pth'
    save_checkpoint_atomic(training_state(), path)
    data = path.read_bytes()
    path.write_bytes({'truncate': data[:len(data) // 2],
                      'garbage': os.urandom(len(data)),
                      'empty': b''}[damage])
    with pytest.raises(CheckpointLoadError, match='iter_4.pth.*corrupt'):
        load_checkpoint_file(path)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(CheckpointLoadError, match='nope.pth'):
        load_checkpoint_file(tmp_path / 'nope.pth')


KILL_SCRIPT = r'''
import os, sys, time, torch
import vistok.utils.checkpoint as ck
path, flag = sys.argv[1], sys.argv[2]
def hang(fd):                      # the process dies between write and rename
    open(flag, 'w').close()
    time.sleep(600)
ck.os.fsync = hang
ck.save_checkpoint_atomic({'state_dict': {'w': torch.full((256, 1024), 2.0)}},
                          path)
'''


def test_kill_during_write_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / 'latest.pth'
    save_checkpoint_atomic({'state_dict': {'w': torch.ones(3)}}, path)
    flag = tmp_path / 'writing'
    proc = subprocess.Popen([sys.executable, '-c', KILL_SCRIPT, str(path),
                             str(flag)], env=subprocess_env())
    try:
        for _ in range(1200):  # poll for up to a minute
            if flag.exists():
                break
            assert proc.poll() is None, 'writer exited early'
            time.sleep(0.05)
        assert flag.exists(), 'writer never reached the write'
        temporaries = [p for p in tmp_path.iterdir() if p.suffix == '.tmp']
        assert temporaries and temporaries[0].stat().st_size > 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert torch.equal(load_checkpoint_file(path)['state_dict']['w'],
                       torch.ones(3))


def test_many_random_garbage_files_all_fail_clearly(tmp_path):
    """Random bytes make torch's unpickler raise assorted error types; every
    one must become a CheckpointLoadError naming the file."""
    import random
    rng = random.Random(0)
    for i in range(200):
        path = tmp_path / f'garbage_{i}.pth'
        path.write_bytes(rng.randbytes(rng.randint(1, 4096)))
        with pytest.raises(CheckpointLoadError, match=f'garbage_{i}.pth'):
            load_checkpoint_file(path)
