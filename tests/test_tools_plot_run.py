"""tools/analysis/plot_run.py: the sheet of one finished run, the curves of
several in one figure."""
import json
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from _helpers import load_tool
from vistok.engine.hooks.run_summary_hook import save_summary_data

plot_run = load_tool('tools/analysis/plot_run.py', 'plot_run')


def fake_run(root, name, losses, psnrs, with_data=False):
    """A work dir as tools/train.py leaves it: scalars.json with a
    training record per loss and a validation record per psnr."""
    work_dir = root / name
    log = work_dir / '20260101_000000' / 'vis_data'
    log.mkdir(parents=True)
    records = [dict(lr=0.1, loss=loss, loss_l1=loss / 2, step=i + 1)
               for i, loss in enumerate(losses)]
    records += [dict(psnr=psnr, usage=0.5, step=2 * (i + 1))
                for i, psnr in enumerate(psnrs)]
    (log / 'scalars.json').write_text(
        '\n'.join(json.dumps(r) for r in records) + '\n')
    if with_data:
        rng = np.random.default_rng(0)
        save_summary_data(
            str(work_dir / 'summary.npz'),
            grid=rng.integers(0, 255, (40, 80, 3), dtype=np.uint8),
            grid_step=4,
            code_counts={'depth0.': rng.integers(0, 9, 16),
                         'depth1.': np.arange(8)})
    return str(work_dir)


def decoded(path):
    with Image.open(path) as image:
        image.load()
        return np.asarray(image.convert('RGB'))


def test_two_runs_make_one_figure(tmp_path, capsys):
    runs = [fake_run(tmp_path, 'a', [3, 2, 1, 0.5], [10, 12]),
            fake_run(tmp_path, 'b', [3, 2.5, 2, 1.8], [9, 10])]
    out = plot_run.main(runs + ['--out', str(tmp_path / 'both.png')])
    assert out == str(tmp_path / 'both.png')
    assert f'wrote {out}' in capsys.readouterr().out
    both = decoded(out)
    assert both.std() > 10
    # curves only: one row of 3 panels (loss, psnr, usage), no grid below
    one = decoded(plot_run.main([runs[0], '--out',
                                 str(tmp_path / 'one.png')]))
    assert both.shape[0] < 1.5 * one.shape[0]
    assert not osp.exists(osp.join(runs[0], 'summary.png'))


def test_one_run_with_saved_data_gets_grid_and_usage_rows(tmp_path):
    plain = fake_run(tmp_path, 'plain', [3, 2], [10])
    full = fake_run(tmp_path, 'full', [3, 2], [10], with_data=True)
    plot_run.main([plain])
    plot_run.main([full])
    # default output: the run's own summary.png; taller with the grid
    # and the usage histograms
    assert decoded(osp.join(full, 'summary.png')).shape[0] > 2 * decoded(
        osp.join(plain, 'summary.png')).shape[0]


def test_a_dir_without_scalars_is_named(tmp_path):
    run = fake_run(tmp_path, 'a', [1], [1])
    (tmp_path / 'empty').mkdir()
    with pytest.raises(SystemExit, match='empty holds no .*scalars.json'):
        plot_run.main([run, str(tmp_path / 'empty')])
    with pytest.raises(SystemExit, match='missing is not a directory'):
        plot_run.main([str(tmp_path / 'missing')])
