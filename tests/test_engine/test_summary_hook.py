"""RunSummaryHook: the sheet of a training run (curves, the last
validation's reconstructions and codebook usage), written without ever
failing the run."""
import json
import os.path as osp
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from _helpers import REPO_ROOT, load_tool
from vistok.apis import apply_cli_options, build_runner
from vistok.engine.hooks import run_summary_hook
from vistok.engine.hooks.reconstruction_grid_hook import reconstruction_grid
from vistok.engine.hooks.run_summary_hook import (
    RunSummaryHook,
    find_scalars,
    load_summary_data,
    read_scalars,
)
from vistok.engine.hooks.save_reconstructions_hook import to_uint8_hwc
from vistok.structures import DataSample

DEMO = osp.join(REPO_ROOT, 'configs/vqvae/'
                'vqvae_vq-512_conv-f4_1xb8-2k_shapes-64.py')
TINY = osp.join(REPO_ROOT, 'tests/data/configs/tiny_vqvae.py')
MAX_ITERS, VAL_INTERVAL, NUM_IMAGES = 4, 2, 3


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """The demo tokenizer at tiny sizes, 4 iterations, validated at 2 and
    4, with the hook as the demo config has it (3 images)."""
    cfg = Config.fromfile(TINY)
    work_dir = tmp_path_factory.mktemp('summary_run')
    apply_cli_options(cfg, work_dir=str(work_dir), cfg_options={
        'train_cfg.max_iters': MAX_ITERS,
        'train_cfg.val_interval': VAL_INTERVAL,
        'default_hooks.checkpoint.interval': 1000,
        'default_hooks.checkpoint.save_last': False,
        'custom_hooks': [dict(type='RunSummaryHook', num_images=NUM_IMAGES,
                              nrow=NUM_IMAGES)]})
    runner = build_runner(cfg)
    runner.train()
    return runner


def test_demo_config_draws_the_sheet_and_logs_val_at_iterations():
    cfg = Config.fromfile(DEMO)
    assert [h['type'] for h in cfg.custom_hooks] == ['RunSummaryHook']
    assert cfg.default_hooks.logger.log_metric_by_epoch is False


def test_sheet_is_written_and_decodable(run):
    path = osp.join(run.work_dir, 'summary.png')
    with Image.open(path) as image:
        image.load()
        pixels = np.asarray(image.convert('RGB'))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300
    assert pixels.std() > 10  # not blank
    colours = pixels.reshape(-1, 3).astype(np.int64) @ [1 << 16, 1 << 8, 1]
    assert len(np.unique(colours)) > 100


def test_saved_grid_and_counts_are_the_last_validation(run):
    data = load_summary_data(osp.join(run.work_dir, 'summary.npz'))
    assert data['grid_step'] == MAX_ITERS
    # the model now is the model of the last validation (at MAX_ITERS)
    loader = run.val_dataloader
    batch = loader.collate_fn([loader.dataset[i] for i in range(NUM_IMAGES)])
    run.model.eval()
    with torch.no_grad():
        samples = run.model.val_step(batch)
    expected = reconstruction_grid(
        [to_uint8_hwc(s.gt_img) for s in samples],
        [to_uint8_hwc(s.pred_img) for s in samples], nrow=NUM_IMAGES)
    np.testing.assert_array_equal(data['grid'], expected)

    counts, = data['code_counts'].values()
    assert list(data['code_counts']) == ['']
    tokens_per_image = samples[0].tokens.numel()
    assert counts.shape == (run.model.codebook_size,)
    assert counts.sum() == len(loader.dataset) * tokens_per_image
    # the usage the CodebookUsage metric logged for that validation
    _, val = read_scalars(find_scalars(run.work_dir))
    assert val['usage'][0] == [VAL_INTERVAL, MAX_ITERS]
    assert (counts > 0).mean() == pytest.approx(val['usage'][1][-1])


def test_read_scalars_curves_over_iterations(run, tmp_path):
    train, val = read_scalars(find_scalars(run.work_dir))
    assert train['loss'][0] == list(range(1, MAX_ITERS + 1))
    assert {'loss', 'loss_l1', 'loss_commitment'} <= set(train)
    assert 'lr' not in train and 'time' not in val
    assert set(val) >= {'psnr', 'usage', 'perplexity'}
    # legacy runs logged the epoch (0) for validation; a resumed run
    # (second file) logs its steps again and replaces them
    first, second = tmp_path / 'a.json', tmp_path / 'b.json'
    first.write_text('\n'.join(json.dumps(r) for r in [
        dict(lr=1, loss=3.0, step=5), dict(psnr=10.0, step=0),
        dict(lr=1, loss=2.0, step=10), dict(psnr=12.0, step=0),
        dict(psnr=9.0, **{'depth0.usage': 0.5}, step=0)]))
    second.write_text(json.dumps(dict(lr=1, loss=1.5, step=10)))
    train, val = read_scalars([str(first), str(second)])
    assert train == {'loss': ([5, 10], [3.0, 1.5])}
    assert val == {'psnr': ([5, 10], [10.0, 9.0])}


def test_plot_run_redraws_the_hooks_sheet(run, tmp_path):
    tool = load_tool('tools/analysis/plot_run.py', 'plot_run_redraw')
    out = tool.main([run.work_dir, '--out', str(tmp_path / 'again.png')])
    with Image.open(out) as again, Image.open(
            osp.join(run.work_dir, 'summary.png')) as first:
        np.testing.assert_array_equal(np.asarray(again), np.asarray(first))


class RecordingLogger:

    def __init__(self):
        self.warnings, self.infos = [], []

    def warning(self, message):
        self.warnings.append(message)

    def info(self, message):
        self.infos.append(message)


def fake_runner(work_dir):
    """A runner with one logged training iteration and no validation."""
    log_dir = work_dir / '20260101_000000' / 'vis_data'
    log_dir.mkdir(parents=True)
    (log_dir / 'scalars.json').write_text(
        json.dumps(dict(lr=0.1, loss=1.0, step=1)) + '\n')
    return SimpleNamespace(work_dir=str(work_dir), iter=1,
                           logger=RecordingLogger(),
                           model=torch.nn.Linear(1, 1))


def test_without_validation_the_sheet_has_curves_and_a_warning(tmp_path):
    runner = fake_runner(tmp_path)
    RunSummaryHook().after_train(runner)
    assert osp.isfile(tmp_path / 'summary.png')
    assert load_summary_data(str(tmp_path / 'summary.npz')) == dict(
        grid=None, grid_step=None, code_counts={})
    assert runner.logger.warnings == [
        'RunSummaryHook: no reconstruction grid or codebook usage: the run '
        'had no validation']


def test_samples_without_images_or_tokens_are_named(tmp_path):
    """A model whose validation samples carry neither images nor tokens
    (e.g. a generator's) still gets its curves."""
    runner = fake_runner(tmp_path)
    hook = RunSummaryHook()
    hook.before_val_epoch(runner)
    hook.after_val_iter(runner, 0, outputs=[DataSample(score=1.0)])
    hook.after_val_epoch(runner)
    hook.after_train(runner)
    assert runner.logger.warnings == [
        'RunSummaryHook: no reconstruction grid: the validation samples of '
        'Linear carry no gt_img / pred_img',
        'RunSummaryHook: no codebook usage: the validation samples of '
        'Linear carry no token_levels / tokens']
    assert osp.isfile(tmp_path / 'summary.png')


def test_a_failing_drawing_never_fails_the_run(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError('no fonts')

    monkeypatch.setattr(run_summary_hook, 'draw_sheet', broken)
    runner = fake_runner(tmp_path)
    hook = RunSummaryHook()
    # 3-D volumes cannot be tiled: the capture stops with a reason
    hook.after_val_iter(runner, 0, outputs=[DataSample(
        gt_img=torch.zeros(1, 2, 4, 4), pred_img=torch.zeros(1, 2, 4, 4))])
    hook.after_val_epoch(runner)
    hook.after_train(runner)
    assert not osp.exists(tmp_path / 'summary.png')
    assert runner.logger.warnings[0].startswith(
        'RunSummaryHook: reading the validation samples failed (')
    assert runner.logger.warnings[-1] == (
        f'RunSummaryHook: {tmp_path / "summary.png"} not written '
        f'(RuntimeError: no fonts)')


def test_arguments_are_checked():
    with pytest.raises(ValueError, match='num_images'):
        RunSummaryHook(num_images=0)
    with pytest.raises(ValueError, match='out_file'):
        RunSummaryHook(out_file='summary.jpg')
