"""Training-engine behaviour: exact resume, checkpoint safety, --amp on CPU,
distributed training on CPU."""
import hashlib
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook

from _helpers import REPO_ROOT, free_port, subprocess_env, torch_threads
from vistok.apis import apply_cli_options, build_runner
from vistok.utils.checkpoint import CheckpointLoadError, load_checkpoint_file
from vistok.utils.export import extract_weights

TINY = osp.join(REPO_ROOT, 'tests/data/configs/tiny_vqvae.py')
TINY_GAN = osp.join(REPO_ROOT, 'tests/data/configs/tiny_vqgan.py')


class RecordLosses(Hook):
    priority = 'LOWEST'

    def __init__(self, crash_after=None):
        self.losses = {}
        self.crash_after = crash_after
        self.initial_weights = None

    def before_train(self, runner):
        self.initial_weights = weights(runner)

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.losses[runner.iter + 1] = {k: float(v) for k, v in
                                        outputs.items()}
        if self.crash_after == runner.iter + 1:
            raise KeyboardInterrupt('simulated crash')


class DropResumedRngState(Hook):
    """Resume without restoring the RNG states: the loop restores
    ``runner.resumed_rng_state`` after ``before_train``."""
    priority = 'HIGHEST'

    def before_train(self, runner):
        assert runner.resumed_rng_state is not None  # a real resume
        runner.resumed_rng_state = None


def run(work_dir, name, *, resume=None, crash_after=None, amp=False,
        options=None, config=TINY, hooks=()):
    cfg = Config.fromfile(config)
    apply_cli_options(cfg, work_dir=str(work_dir), resume=resume, amp=amp,
                      cfg_options=options)
    cfg.experiment_name = name
    runner = build_runner(cfg)
    recorder = RecordLosses(crash_after)
    runner.register_hook(recorder)
    for hook in hooks:
        runner.register_hook(hook)
    try:
        runner.train()
    except KeyboardInterrupt:
        pass
    runner.initial_weights = recorder.initial_weights
    return runner, recorder.losses


def weights(runner):
    return {k: v.clone() for k, v in runner.model.state_dict().items()}


def digest(directory):
    return {name: hashlib.sha256(open(osp.join(directory, name), 'rb')
                                 .read()).hexdigest()
            for name in sorted(os.listdir(directory))
            if name.endswith('.pth') or name == 'last_checkpoint'}


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('full')
    runner, losses = run(work_dir, 'full')
    # max_keep_ckpts=2: the oldest is removed once newer ones are complete
    assert sorted(p for p in os.listdir(work_dir) if p.endswith('.pth')) == \
        ['iter_12.pth', 'iter_8.pth']
    return weights(runner), losses


@pytest.fixture(scope='module')
def interrupted(tmp_path_factory):
    """The tiny run killed after iteration 10 (last checkpoint: 8)."""
    work_dir = tmp_path_factory.mktemp('interrupted')
    _, first = run(work_dir, 'part1', crash_after=10)
    assert {'iter_4.pth', 'iter_8.pth'} <= set(os.listdir(work_dir))
    return work_dir, first


def copy_work_dir(source, target):
    """A copy of a work dir whose ``last_checkpoint`` names its own
    files."""
    shutil.copytree(source, target)
    pointer = osp.join(target, 'last_checkpoint')
    name = osp.basename(open(pointer).read().strip())
    with open(pointer, 'w') as f:
        f.write(osp.join(target, name))
    return target


def test_resume_auto_continues_exactly(tmp_path, uninterrupted, interrupted):
    full_weights, full_losses = uninterrupted
    assert len(full_losses) == 12
    work_dir = copy_work_dir(interrupted[0], tmp_path / 'resumed')
    first = interrupted[1]
    runner, second = run(work_dir, 'part2', resume='auto')
    assert sorted(second) == [9, 10, 11, 12]
    for it in range(1, 9):
        assert first[it] == full_losses[it]
    for it in range(9, 13):
        assert second[it] == full_losses[it], it
    resumed = weights(runner)
    assert all(torch.equal(resumed[k], full_weights[k]) for k in resumed)


def test_gan_resume_continues_exactly(tmp_path):
    """Two optimizers, two schedules, LeCam buffers, the EMA copy and the
    discriminator all resume: the next iterations are those of an
    uninterrupted run."""
    options = {'train_cfg.max_iters': 8}
    full, full_losses = run(tmp_path / 'full', 'full', options=options,
                            config=TINY_GAN)
    assert 'loss_disc' in full_losses[8] and 'loss_disc' not in full_losses[3]
    _, first = run(tmp_path / 'part', 'part1', crash_after=6,
                   options=options, config=TINY_GAN)
    runner, second = run(tmp_path / 'part', 'part2', resume='auto',
                         options=options, config=TINY_GAN)
    assert sorted(second) == [5, 6, 7, 8]
    for it in range(5, 9):
        assert second[it] == full_losses[it], it
    resumed, expected = weights(runner), weights(full)
    assert any(k.startswith('ema.') for k in expected)
    assert any(k.startswith('discriminator.') for k in expected)
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)
    # exporting the EMA: averaged generator weights under the model's names
    state = load_checkpoint_file(tmp_path / 'full' / 'iter_8.pth')
    averaged = extract_weights(state, ema=True)
    raw = extract_weights(state)
    assert set(averaged) == set(raw) == {
        k for k in expected if not k.startswith('ema.')}
    assert torch.equal(averaged['decoder.conv_out.weight'],
                       expected['ema.decoder.conv_out.weight'])
    assert not torch.equal(averaged['decoder.conv_out.weight'],
                           raw['decoder.conv_out.weight'])
    assert torch.equal(averaged['discriminator.main.0.weight'],
                       raw['discriminator.main.0.weight'])


def test_runners_started_in_the_same_second_keep_their_own_logs(
        tmp_path, monkeypatch):
    """mmengine's logger / message hub / visualizer are global instances
    named after a one-second timestamp; a second run in that second must not
    write into the first one's work dir."""
    import time
    now = time.time()
    monkeypatch.setattr(time, 'time', lambda: now)
    runners = []
    for name in ('a', 'b'):
        cfg = Config.fromfile(TINY)
        apply_cli_options(cfg, work_dir=str(tmp_path / name))
        runners.append(build_runner(cfg))
    first, second = runners
    assert first.experiment_name != second.experiment_name
    assert second.log_dir.startswith(str(tmp_path / 'b'))
    assert second.message_hub is not first.message_hub
    assert second.visualizer is not first.visualizer


def test_resume_without_rng_restore_differs(tmp_path, uninterrupted,
                                            interrupted):
    """Guard that the exact-resume test can fail: the same resume with the
    checkpoint's RNG states dropped (model, optimizer, schedulers and data
    position still restored) draws other dropout masks, so every resumed
    iteration and the final weights differ from the uninterrupted run."""
    full_weights, full_losses = uninterrupted
    work_dir = copy_work_dir(interrupted[0], tmp_path / 'resumed')
    runner, second = run(work_dir, 'no_rng', resume='auto',
                         hooks=[DropResumedRngState()])
    assert sorted(second) == [9, 10, 11, 12]
    for it in range(9, 13):
        assert second[it]['loss'] != full_losses[it]['loss'], it
    resumed = weights(runner)
    assert not all(torch.equal(resumed[k], full_weights[k]) for k in resumed)


def test_crash_during_save_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import vistok.engine.runner as runner_module
    real_save = runner_module.save_checkpoint_atomic
    calls = []

    def crashing_save(checkpoint, filename):
        calls.append(filename)
        if len(calls) == 3:  # the save at iteration 12 dies mid-way
            raise KeyboardInterrupt('killed while saving')
        real_save(checkpoint, filename)

    monkeypatch.setattr(runner_module, 'save_checkpoint_atomic', crashing_save)
    with pytest.raises(KeyboardInterrupt):
        cfg = Config.fromfile(TINY)
        apply_cli_options(cfg, work_dir=str(tmp_path))
        cfg.experiment_name = 'crash_save'
        build_runner(cfg).train()
    # mmengine would already have deleted iter_4 (max_keep_ckpts=2) and
    # pointed last_checkpoint at the missing iter_12.pth
    assert osp.isfile(tmp_path / 'iter_4.pth')
    assert osp.isfile(tmp_path / 'iter_8.pth')
    assert not osp.exists(tmp_path / 'iter_12.pth')
    last = open(tmp_path / 'last_checkpoint').read().strip()
    assert last.endswith('iter_8.pth')
    assert load_checkpoint_file(last)['meta']['iter'] == 8


def test_resume_auto_skips_corrupt_newest(tmp_path):
    run(tmp_path, 'c1', crash_after=9)
    data = (tmp_path / 'iter_8.pth').read_bytes()
    (tmp_path / 'iter_8.pth').write_bytes(data[:len(data) // 3])
    runner, losses = run(tmp_path, 'c2', resume='auto',
                         options={'train_cfg.max_iters': 6})
    assert runner.iter == 6 and sorted(losses) == [5, 6]  # resumed from 4


def test_corrupt_checkpoint_fails_clearly_and_leaves_work_dir(tmp_path):
    run(tmp_path, 'd1', crash_after=9)
    bad = tmp_path / 'bad.pth'
    bad.write_bytes((tmp_path / 'iter_8.pth').read_bytes()[:1000])
    before = digest(tmp_path)
    for kind in ('resume', 'load_from'):
        cfg = Config.fromfile(TINY)
        apply_cli_options(cfg, work_dir=str(tmp_path),
                          **{kind: str(bad)})
        cfg.experiment_name = f'd2_{kind}'
        with pytest.raises(CheckpointLoadError, match='bad.pth.*corrupt'):
            build_runner(cfg).train()
        assert digest(tmp_path) == before


def test_amp_on_cpu_uses_bf16_autocast(tmp_path):
    runner, losses = run(tmp_path, 'amp', amp=True,
                         options={'train_cfg.max_iters': 2})
    assert type(runner.optim_wrapper).__name__ == 'AutocastOptimWrapper'
    assert runner.optim_wrapper.cast_dtype == torch.bfloat16
    assert all(torch.isfinite(torch.tensor(v['loss'])) for v in
               losses.values())


def test_amp_switches_both_gan_optimizers(tmp_path):
    runner, losses = run(tmp_path, 'amp_gan', amp=True, config=TINY_GAN,
                         options={'train_cfg.max_iters': 4})
    for name in ('generator', 'discriminator'):
        wrapper = runner.optim_wrapper[name]
        assert type(wrapper).__name__ == 'AutocastOptimWrapper', name
    assert 'loss_disc' in losses[4]
    assert all(torch.isfinite(torch.tensor(v)) for it in losses.values()
               for v in it.values())


GAN_DIST_OPTIONS = {
    # the adaptive weight and LeCam are non-linear in per-rank statistics
    # (as in every DDP implementation), so the equality needs them off
    'model.adversarial_loss.adaptive_weight': False,
    'model.adversarial_loss.lecam_weight': 0.0,
    'model.adversarial_loss.start_iter': 0,
}


@pytest.mark.parametrize('config,extra', [(TINY, {}),
                                          (TINY_GAN, GAN_DIST_OPTIONS)],
                         ids=['vqvae', 'vqgan'])
def test_dist_train_two_cpu_processes_match_one(tmp_path, config, extra):
    """tools/dist_train.sh CONFIG 2 (gloo, 2 x batch 4) reproduces one process
    with batch 8 (no dropout, GroupNorm, no batch-dependent restarts); with
    a discriminator both optimizers' gradients are averaged over ranks."""
    common = {'model.encoder.dropout': 0.0, 'model.decoder.dropout': 0.0,
              'train_cfg.max_iters': 3, 'train_cfg.val_interval': 100,
              'default_hooks.checkpoint.interval': 3, **extra}
    with torch_threads(1):  # the thread count of the torchrun processes
        single, _ = run(tmp_path / 'one', 'one', config=config,
                        options=dict(common,
                                     **{'train_dataloader.batch_size': 8}))
    options = [f'{k}={v}' for k, v in common.items()]
    proc = subprocess.run(
        ['bash', osp.join(REPO_ROOT, 'tools/dist_train.sh'), config, '2',
         '--work-dir', str(tmp_path / 'two'), '--cfg-options', *options,
         'train_dataloader.batch_size=4'],
        env=subprocess_env(PYTHON=sys.executable, PORT=free_port()),
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = load_checkpoint_file(tmp_path / 'two' / 'iter_3.pth')['state_dict']
    one = single.model.state_dict()
    assert set(two) == set(one)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5,
                                   msg=key)
    assert any(not torch.equal(one[k], v)
               for k, v in single.initial_weights.items()), 'nothing trained'
    log = open(next((tmp_path / 'two').glob('*/*.log'))).read()
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
