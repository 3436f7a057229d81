"""CodebookUsageHook (windowed per-level usage into the message hub and the
vis backends) and ReconstructionGridHook (PNG grids that leave training
bit-identical)."""
import glob
import json
import math
import os
import os.path as osp
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import MessageHub
from PIL import Image

from _helpers import REPO_ROOT
from vistok.apis import apply_cli_options, build_runner
from vistok.engine.hooks import codebook_usage_hook
from vistok.engine.hooks.codebook_usage_hook import (
    CodebookUsageHook,
    window_usage,
)
from vistok.engine.hooks.reconstruction_grid_hook import (
    ReconstructionGridHook,
    reconstruction_grid,
)
from vistok.engine.hooks.save_reconstructions_hook import to_uint8_hwc
from vistok.registry import HOOKS
from vistok.utils.rng import get_rng_state

TINY = osp.join(REPO_ROOT, 'tests/data/configs/tiny_vqvae.py')
MAX_ITERS = 6
GRID = dict(interval=3, num_images=3, nrow=2, padding=2, pad_value=255)
USAGE_INTERVAL = 2


def entropy(counts):
    p = [c / sum(counts) for c in counts if c > 0]
    return -sum(x * math.log(x) for x in p)


# ---------------------------------------------------------------- usage hook
def test_window_usage_of_known_histograms():
    logs = window_usage({'': torch.tensor([2, 2, 4, 0]),
                         'depth1.': torch.tensor([0, 0, 5])})
    h = entropy([2, 2, 4])
    assert logs == pytest.approx({
        'usage': 3 / 4, 'entropy': h, 'perplexity': math.exp(h),
        'dead_codes': 1.0, 'depth1.usage': 1 / 3, 'depth1.entropy': 0.0,
        'depth1.perplexity': 1.0, 'depth1.dead_codes': 2.0}, rel=1e-6)


class FakeModel:
    """Hands out pre-set per-level histograms, one set per call."""

    def __init__(self, windows):
        self.windows = list(windows)
        self.calls = 0

    def pop_code_counts(self):
        self.calls += 1
        return self.windows.pop(0)


def test_usage_hook_sums_ranks_and_logs_each_window(monkeypatch):
    windows = [{'': torch.tensor([9, 9, 9])},  # before_train reset: dropped
               {'': torch.tensor([1, 0, 0]), 'scale1.': torch.tensor([0, 2])},
               {'': torch.tensor([1, 1, 0]), 'scale1.': torch.tensor([3, 0])}]
    other_rank = {'': torch.tensor([0, 0, 2]), 'scale1.': torch.tensor([0, 0])}

    def all_reduce_dict(data, op):  # a second rank contributes other_rank
        assert op == 'sum'
        for key in data:
            data[key] += other_rank[key]

    monkeypatch.setattr(codebook_usage_hook, 'all_reduce_dict',
                        all_reduce_dict)
    runner = SimpleNamespace(model=FakeModel(windows),
                             message_hub=MessageHub('usage_hook_test'))
    hook = HOOKS.build(dict(type='CodebookUsageHook', interval=2))
    hook.before_train(runner)
    for runner.iter in range(4):
        hook.after_train_iter(runner, runner.iter)
    assert runner.model.calls == 3  # reset + iterations 2 and 4

    scalars = runner.message_hub.log_scalars
    usage = scalars['train/codebook/usage'].data[0]
    np.testing.assert_allclose(usage, [2 / 3, 1.0])
    np.testing.assert_allclose(scalars['train/codebook/entropy'].data[0],
                               [entropy([1, 0, 2]), entropy([1, 1, 2])])
    np.testing.assert_allclose(
        scalars['train/codebook/scale1.perplexity'].data[0],
        [1.0, 1.0])
    np.testing.assert_allclose(scalars['train/codebook/dead_codes'].data[0],
                               [1, 0])
    np.testing.assert_allclose(
        scalars['train/codebook/scale1.dead_codes'].data[0], [1, 1])


def test_usage_hook_fills_levels_missing_on_this_rank(monkeypatch):
    """Residual dropout may skip a depth for a whole window on one rank:
    that rank contributes zeros, so every rank reduces the same keys."""
    reduced = {}

    def all_reduce_dict(data, op):
        reduced.update({k: v.clone() for k, v in data.items()})

    monkeypatch.setattr(codebook_usage_hook, 'get_world_size', lambda: 2)
    monkeypatch.setattr(codebook_usage_hook, 'all_gather_object',
                        lambda obj: [obj, {'depth0.': 3, 'depth1.': 4}])
    monkeypatch.setattr(codebook_usage_hook, 'all_reduce_dict',
                        all_reduce_dict)
    runner = SimpleNamespace(
        model=FakeModel([{}, {'depth0.': torch.tensor([1, 0, 2])}]),
        message_hub=MessageHub('usage_hook_missing_level'))
    hook = CodebookUsageHook(interval=1)
    hook.before_train(runner)
    runner.iter = 0
    hook.after_train_iter(runner, 0)
    assert set(reduced) == {'depth0.', 'depth1.'}
    assert torch.equal(reduced['depth1.'], torch.zeros(4, dtype=torch.long))
    assert runner.message_hub.log_scalars[
        'train/codebook/depth1.dead_codes'].current() == 4


def test_usage_hook_needs_pop_code_counts():
    runner = SimpleNamespace(model=torch.nn.Linear(1, 1))
    with pytest.raises(TypeError, match='Linear has none'):
        CodebookUsageHook().before_train(runner)
    with pytest.raises(ValueError, match='interval'):
        CodebookUsageHook(interval=0)


# ----------------------------------------------------------------- the grid
def test_reconstruction_grid_layout():
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 255, (4, 5, 3), dtype=np.uint8)
              for _ in range(3)]
    recons = [rng.integers(0, 255, (4, 5), dtype=np.uint8)  # grey
              for _ in range(3)]
    grid = reconstruction_grid(inputs, recons, nrow=2, padding=1,
                               pad_value=7)
    # 2 chunks -> 4 rows (inputs, reconstructions, inputs, reconstructions)
    assert grid.shape == (4 * 5 + 1, 2 * 6 + 1, 3) and grid.dtype == np.uint8
    expected = np.full_like(grid, 7)
    for i in range(3):
        row, col = 2 * (i // 2), i % 2
        top, left = 1 + row * 5, 1 + col * 6
        expected[top:top + 4, left:left + 5] = inputs[i]
        expected[top + 5:top + 9, left:left + 5] = recons[i][..., None]
    np.testing.assert_array_equal(grid, expected)
    with pytest.raises(ValueError, match='one size'):
        reconstruction_grid(inputs, [np.zeros((3, 3), np.uint8)] * 3)


class RecordLosses(Hook):
    priority = 'LOWEST'

    def __init__(self):
        self.losses = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.losses[runner.iter + 1] = {k: float(v.detach()) for k, v in
                                        outputs.items()}


def count_codes(runner):
    """Give the tiny tokenizer the ``pop_code_counts`` contract (as the
    tokenizer implements it): sum the quantizer's ``code_counts`` stats of
    training forwards; also record each iteration's histogram."""
    model, state = runner.model, dict(window=None, per_iter=[])

    def record(module, args, out):
        if module.training:
            counts = out.stats['code_counts']
            state['per_iter'].append(counts.clone())
            state['window'] = counts if state['window'] is None else (
                state['window'] + counts)

    def pop_code_counts():
        window, state['window'] = state['window'], None
        return {} if window is None else {'': window}

    model.quantizer.register_forward_hook(record)
    model.pop_code_counts = pop_code_counts
    return state


def train(work_dir, hooks=()):
    cfg = Config.fromfile(TINY)
    apply_cli_options(cfg, work_dir=str(work_dir), cfg_options={
        'train_cfg.max_iters': MAX_ITERS, 'train_cfg.val_begin': 1000,
        'default_hooks.checkpoint.interval': 1000,
        'default_hooks.checkpoint.save_last': False})
    runner = build_runner(cfg)
    recorder = RecordLosses()
    runner.register_hook(recorder)
    state = count_codes(runner)
    for hook in hooks:
        runner.register_hook(hook, priority=hook.priority)
    runner.train()
    return runner, recorder.losses, state


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    plain = train(tmp_path_factory.mktemp('plain'))
    grid_hook = ReconstructionGridHook(**GRID)
    hooked = train(tmp_path_factory.mktemp('hooked'), [
        grid_hook, CodebookUsageHook(interval=USAGE_INTERVAL)])
    return plain, hooked, grid_hook


def test_hooks_leave_training_bit_identical(runs):
    (plain, plain_losses, _), (hooked, hooked_losses, _), _ = runs
    assert len(plain_losses) == MAX_ITERS
    assert hooked_losses == plain_losses
    hooked_weights = hooked.model.state_dict()
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, hooked_weights[key]), key


def fixed_batch(runner):
    loader = runner.val_dataloader
    return loader.collate_fn(
        [loader.dataset[i] for i in range(GRID['num_images'])])


def test_grid_png_holds_inputs_over_reconstructions(runs):
    _, (runner, _, _), hook = runs
    pngs = sorted(os.listdir(osp.join(runner.work_dir, 'reconstructions')))
    # every 3 iterations; after_train does not repeat the last one
    assert pngs == ['iter_0000003.png', 'iter_0000006.png']
    grid = np.asarray(Image.open(
        osp.join(runner.work_dir, 'reconstructions', pngs[-1])))
    side, pad = 32, GRID['padding']
    assert grid.shape == (4 * (side + pad) + pad, 2 * (side + pad) + pad, 3)

    runner.model.eval()
    with torch.no_grad():
        samples = runner.model.val_step(fixed_batch(runner))
    for i, sample in enumerate(samples):
        top = (2 * (i // 2)) * (side + pad) + pad
        left = (i % 2) * (side + pad) + pad
        tile = grid[top:top + side, left:left + side]
        below = grid[top + side + pad:top + 2 * side + pad,
                     left:left + side]
        np.testing.assert_array_equal(tile, to_uint8_hwc(sample.gt_img))
        np.testing.assert_array_equal(below, to_uint8_hwc(sample.pred_img))
    assert not np.array_equal(tile, below)
    # the visualizer's backends got it too (LocalVisBackend writes a PNG)
    logged = glob.glob(osp.join(runner.work_dir, '*', 'vis_data',
                                'vis_image', 'reconstructions_6.png'))
    assert len(logged) == 1
    np.testing.assert_array_equal(np.asarray(Image.open(logged[0])), grid)


def test_grid_restores_rng_and_module_modes(runs):
    _, (runner, _, _), hook = runs
    model = runner.model
    original = model.val_step

    def noisy_val_step(batch):  # a prediction path that draws random numbers
        torch.rand(1), random.random(), np.random.rand()
        return original(batch)

    model.val_step = noisy_val_step
    model.train()
    model.encoder.eval()
    before = get_rng_state()
    try:
        hook.write_grid(runner, 100)
    finally:
        del model.val_step
    after = get_rng_state()
    assert torch.equal(before['torch'], after['torch'])
    assert before['python'] == after['python']
    assert torch.equal(before['numpy']['keys'], after['numpy']['keys'])
    assert not model.encoder.training and model.decoder.training
    assert all(not m.training for m in model.encoder.modules())


def test_usage_hook_reaches_log_and_vis_backends(runs):
    _, (runner, _, state), _ = runs
    per_iter = state['per_iter']
    assert len(per_iter) == MAX_ITERS
    expected = [
        window_usage({'': sum(per_iter[i:i + USAGE_INTERVAL])})
        for i in range(0, MAX_ITERS, USAGE_INTERVAL)
    ]
    buffer = runner.message_hub.log_scalars['train/codebook/perplexity']
    np.testing.assert_allclose(buffer.data[0],
                               [e['perplexity'] for e in expected], rtol=1e-6)
    # LoggerHook (interval 1) sent them to the vis backend's scalars.json
    path, = glob.glob(osp.join(runner.work_dir, '*', 'vis_data',
                               'scalars.json'))
    with open(path) as f:
        lines = [json.loads(line) for line in f]
    logged = {line['step']: line['codebook/usage'] for line in lines
              if 'codebook/usage' in line}
    assert logged[USAGE_INTERVAL] == pytest.approx(expected[0]['usage'])
    assert logged[MAX_ITERS] == pytest.approx(expected[-1]['usage'])
