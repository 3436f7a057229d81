"""The README's commands and the tools, run as a user runs them."""
import glob
import json
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from _helpers import REPO_ROOT, subprocess_env

DEMO_CONFIG = osp.join(REPO_ROOT, 'configs/vqvae/'
                       'vqvae_fsq-1k_conv-f4_1xb8-1500_shapes-64.py')


def test_readme_quick_start_names_the_scripts_ci_runs():
    readme = open(osp.join(REPO_ROOT, 'README.md')).read()
    quick_start = readme.split('## Quick start')[1].split('##')[0]
    assert 'bash tools/run_demo.sh' in quick_start
    assert 'bash tools/run_tests.sh' in quick_start
    assert 'tools/run_tests.sh' in open(osp.join(REPO_ROOT, '.ci/run')).read()
    assert osp.basename(DEMO_CONFIG) in open(
        osp.join(REPO_ROOT, 'tools/run_demo.sh')).read()


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    """The README's demo command (tools/run_demo.sh), shortened to 120
    iterations; the set-up step is skipped by pointing it at this
    interpreter (CI exercises the set-up through tools/run_tests.sh)."""
    work_dir = tmp_path_factory.mktemp('demo')
    proc = subprocess.run(
        ['bash', osp.join(REPO_ROOT, 'tools/run_demo.sh'), '--cfg-options',
         'train_cfg.max_iters=120', 'train_cfg.val_interval=60',
         'default_hooks.logger.interval=10',
         'default_hooks.checkpoint.interval=60'],
        env=subprocess_env(VISTOK_PYTHON=sys.executable, WORK_DIR=work_dir),
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return work_dir, proc.stdout


def read_scalars(work_dir):
    (path,) = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_demo_training_lowers_loss_and_raises_psnr(demo):
    work_dir, stdout = demo
    records = read_scalars(work_dir)
    losses = [r['loss'] for r in records if 'loss' in r]
    psnr = [r['psnr'] for r in records if 'psnr' in r]
    assert len(losses) == 12 and len(psnr) == 2
    assert sum(losses[-3:]) < 0.85 * sum(losses[:3]), losses
    assert psnr[1] > psnr[0] + 0.5, psnr
    assert 'Demo finished' in stdout
    # tools/test.py evaluated the last checkpoint and saved reconstructions
    tested = re.findall(r"'psnr': ([0-9.]+)", stdout)
    assert tested and float(tested[-1]) == pytest.approx(psnr[-1], abs=1e-3)
    pngs = sorted(glob.glob(osp.join(work_dir, 'reconstructions', '*.png')))
    assert len(pngs) == 256
    # the pictures decode: input | reconstruction side by side, and the
    # run's summary sheet (RunSummaryHook), named in the final message
    from PIL import Image
    for path in pngs[:3]:
        with Image.open(path) as image:
            assert image.size == (2 * 64, 64)
    summary = osp.join(work_dir, 'summary.png')
    assert summary in stdout
    with Image.open(summary) as sheet:
        sheet.load()
        assert min(sheet.size) > 300 and len(sheet.getcolors(1 << 20)) > 100


def test_export_safetensors_matches_checkpoint(demo, tmp_path):
    from vistok.utils.checkpoint import load_checkpoint_file
    work_dir, _ = demo
    ckpt = osp.join(work_dir, 'iter_120.pth')
    out = tmp_path / 'demo.safetensors'
    proc = subprocess.run(
        [sys.executable, osp.join(REPO_ROOT,
                                  'tools/model_converters/export_safetensors.py'),
         ckpt, str(out)], env=subprocess_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    exported = load_file(out)
    state = load_checkpoint_file(ckpt)['state_dict']
    assert set(exported) == set(state)
    assert all(torch.equal(exported[k], state[k]) for k in state)
    proc = subprocess.run(
        [sys.executable, osp.join(REPO_ROOT,
                                  'tools/model_converters/export_safetensors.py'),
         ckpt, str(tmp_path / 'ema.safetensors'), '--ema'],
        env=subprocess_env(), capture_output=True, text=True)
    assert proc.returncode != 0 and 'has no EMA weights' in proc.stderr


def test_test_tool_dumps_predictions(demo, tmp_path, monkeypatch):
    import io
    import runpy

    import mmengine
    work_dir, _ = demo
    tool = runpy.run_path(osp.join(REPO_ROOT, 'tools/test.py'))
    # on a terminal, a progress bar over the test batches (ProgressBarHook)
    tty = type('TTY', (io.StringIO,), dict(isatty=lambda self: True))()
    monkeypatch.setattr(sys, 'stderr', tty)
    out = tmp_path / 'preds.pkl'
    metrics = tool['main']([
        DEMO_CONFIG, osp.join(work_dir, 'iter_120.pth'), '--work-dir',
        str(tmp_path), '--out', str(out), '--cfg-options',
        'test_dataloader.dataset.num_samples=16'])
    assert set(metrics) >= {'psnr', 'usage', 'perplexity'}
    predictions = mmengine.load(out)
    assert len(predictions) == 16
    assert predictions[0]['pred_img'].shape == (3, 64, 64)
    assert '\r' in tty.getvalue() and 'test: 100%' in tty.getvalue()


def test_print_config_merges_bases(capsys):
    import runpy
    tool = runpy.run_path(osp.join(REPO_ROOT,
                                   'tools/analysis/print_config.py'))
    tool['main']([DEMO_CONFIG, '--cfg-options', 'train_cfg.max_iters=7'])
    out = capsys.readouterr().out
    assert "type='AutoencoderTokenizer'" in out and 'max_iters=7' in out
