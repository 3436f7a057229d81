"""One picture of a training run: loss and validation curves, the
reconstruction grid of the last validation and its codebook usage.

:class:`RunSummaryHook` writes ``{work_dir}/summary.png`` at the end of
training, and the data it drew besides it (``summary.npz``), so
``tools/analysis/plot_run.py`` can redraw the sheet of any finished run or
compare the curves of several. The drawing functions use matplotlib's
object-oriented API on the non-interactive Agg canvas (no ``pyplot``, no
global backend switch); matplotlib is imported only when a sheet is drawn.
"""
import glob
import json
import math
import os.path as osp
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.dist import all_reduce_dict, get_world_size, is_main_process
from mmengine.hooks import Hook

from vistok.registry import HOOKS
from .reconstruction_grid_hook import reconstruction_grid
from .save_reconstructions_hook import to_uint8_hwc

#: file names of the sheet and of the data drawn on it (in the work dir)
SUMMARY_PNG = 'summary.png'
SUMMARY_DATA = 'summary.npz'
#: keys of a ``scalars.json`` record that are bookkeeping, not curves
BOOKKEEPING = ('step', 'iter', 'epoch', 'time', 'data_time', 'memory', 'lr')
#: curve panels per row, and a panel's size in inches (width, height)
PANELS_PER_ROW = 4
PANEL_SIZE = (3.2, 2.4)
#: height in inches of the reconstruction grid's row
GRID_HEIGHT = 3.6

#: ``{name: (steps, values)}`` of one kind of curve
Curves = Dict[str, Tuple[List[int], List[float]]]


# --------------------------------------------------------------- the data
def find_scalars(work_dir: str) -> List[str]:
    """The ``{work_dir}/<timestamp>/vis_data/scalars.json`` files that
    mmengine's ``LocalVisBackend`` wrote, oldest first (timestamps sort in
    time order; a resumed run has one per start)."""
    return sorted(
        glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))


def is_train_record(record: Mapping) -> bool:
    """A training iteration's record has the learning rate or a loss; a
    validation record has neither (only metrics and timings)."""
    return 'lr' in record or any(key.startswith('loss') for key in record)


def read_scalars(paths: Sequence[str]) -> Tuple[Curves, Curves]:
    """Training-loss and validation-metric curves of ``scalars.json`` files.

    Returns ``(train, val)``: ``train`` maps every ``loss*`` key of the
    training records to ``(steps, values)``; ``val`` maps every metric of
    the validation records (``psnr``, ``usage``, ...; not per-level
    metrics such as ``depth0.usage``, which the usage histograms show) to
    ``(steps, values)``. Files are read in order and a later record of a
    step replaces an earlier one (a resumed run logs its steps again). A
    validation record at step 0 after training records (mmengine's
    ``LoggerHook`` logs the epoch, 0 in iteration-based runs, unless
    ``log_metric_by_epoch=False``) is placed at the last training step.
    """
    train: Dict[str, Dict[int, float]] = {}
    val: Dict[str, Dict[int, float]] = {}
    for path in paths:
        last_train_step = 0
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f'{path}, line {number}: not JSON '
                                     f'({error})') from None
                step = int(record.get('step', 0))
                if is_train_record(record):
                    last_train_step = step
                    curves = train
                    keys = [k for k in record if k.startswith('loss')]
                else:
                    step = step or last_train_step
                    curves = val
                    keys = [k for k in record
                            if k not in BOOKKEEPING and '.' not in k]
                for key in keys:
                    value = record[key]
                    if isinstance(value, (int, float)):
                        curves.setdefault(key, {})[step] = float(value)

    def as_lists(curves):
        return {key: (sorted(points), [points[s] for s in sorted(points)])
                for key, points in curves.items()}

    return as_lists(train), as_lists(val)


def save_summary_data(path: str,
                      grid: Optional[np.ndarray] = None,
                      grid_step: Optional[int] = None,
                      code_counts: Optional[Mapping[str, np.ndarray]] = None
                      ) -> None:
    """Write what the sheet shows besides the curves to ``path`` (``.npz``,
    no pickled objects): the reconstruction ``grid`` (uint8 ``(H, W, 3)``)
    of iteration ``grid_step`` and the per-level code histograms
    ``code_counts`` (level prefix → ``(K,)`` counts)."""
    arrays = {}
    if grid is not None:
        arrays['grid'] = np.asarray(grid, dtype=np.uint8)
        arrays['grid_step'] = np.asarray(-1 if grid_step is None
                                         else grid_step)
    levels = sorted(code_counts or {})
    arrays['levels'] = np.asarray(levels, dtype=np.str_)
    for i, level in enumerate(levels):
        arrays[f'counts_{i}'] = np.asarray(code_counts[level],
                                           dtype=np.int64)
    np.savez_compressed(path, **arrays)


def load_summary_data(path: str) -> dict:
    """``dict(grid, grid_step, code_counts)`` from a file of
    :func:`save_summary_data` (``grid`` / ``grid_step`` ``None`` when it
    holds none)."""
    with np.load(path, allow_pickle=False) as data:
        levels = [str(level) for level in data['levels']]
        has_grid = 'grid' in data
        return dict(
            grid=data['grid'] if has_grid else None,
            grid_step=int(data['grid_step']) if has_grid else None,
            code_counts={level: data[f'counts_{i}']
                         for i, level in enumerate(levels)})


# ----------------------------------------------------------------- drawing
def _curve_axes(subfig, num_panels: int):
    """``num_panels`` axes in rows of :data:`PANELS_PER_ROW`."""
    cols = min(num_panels, PANELS_PER_ROW)
    rows = math.ceil(num_panels / cols)
    axes = subfig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[num_panels:]:
        ax.set_visible(False)
    return axes[:num_panels]


def draw_curves(subfig, runs: Mapping[str, Tuple[Curves, Curves]]) -> None:
    """Curve panels of one or several runs (name → ``(train, val)`` of
    :func:`read_scalars`): a training-loss panel (every ``loss*`` term of
    one run; each run's total ``loss`` when comparing runs), then one panel
    per validation metric with a line per run."""
    several = len(runs) > 1
    metrics = sorted({key for _, val in runs.values() for key in val})
    axes = _curve_axes(subfig, 1 + len(metrics))
    loss_ax = axes[0]
    for name, (train, _) in runs.items():
        keys = ['loss'] if several and 'loss' in train else sorted(train)
        for key in keys:
            steps, values = train[key]
            loss_ax.plot(steps, values, label=name if several else key,
                         linewidth=1.2 if key == 'loss' else 0.8)
    loss_ax.set_title('training loss')
    if all(v > 0 for train, _ in runs.values() for _, values in
           train.values() for v in values) and any(
               train for train, _ in runs.values()):
        loss_ax.set_yscale('log')
    for ax, metric in zip(axes[1:], metrics):
        for name, (_, val) in runs.items():
            if metric in val:
                steps, values = val[metric]
                ax.plot(steps, values, marker='o', markersize=3, label=name)
        ax.set_title(f'val {metric}')
    for ax in axes:
        ax.set_xlabel('iteration')
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0] and (several or ax is loss_ax):
            ax.legend(fontsize='x-small')


def draw_grid(subfig, grid: np.ndarray, step: Optional[int]) -> None:
    """The reconstruction grid (inputs over their reconstructions)."""
    ax = subfig.subplots()
    ax.imshow(grid, interpolation='nearest')
    ax.set_axis_off()
    when = '' if step is None or step < 0 else f', iteration {step}'
    ax.set_title(f'validation images over their reconstructions{when}')


def draw_usage(subfig, code_counts: Mapping[str, np.ndarray]) -> None:
    """One panel per quantizer level: its code counts sorted by frequency,
    with the share of codes used."""
    levels = sorted(code_counts)
    for ax, level in zip(_curve_axes(subfig, len(levels)), levels):
        counts = np.sort(np.asarray(code_counts[level]))[::-1]
        used = int((counts > 0).sum())
        ax.stairs(counts, fill=True)
        ax.axvline(used, color='tab:red', linewidth=0.8)
        name = level.rstrip('.') or 'codes'
        ax.set_title(f'{name}: {used}/{len(counts)} used '
                     f'({used / max(len(counts), 1):.0%})')
        ax.set_xlabel('code rank (by frequency)')
        ax.set_ylabel('count')
        ax.set_xlim(0, max(len(counts), 1))
        ax.grid(alpha=0.3)


def draw_sheet(out_file: str,
               runs: Mapping[str, Tuple[Curves, Curves]],
               grid: Optional[np.ndarray] = None,
               grid_step: Optional[int] = None,
               code_counts: Optional[Mapping[str, np.ndarray]] = None,
               title: str = '',
               dpi: int = 100) -> None:
    """Draw the curves of ``runs`` (see :func:`draw_curves`), then the
    reconstruction ``grid`` and the ``code_counts`` histograms when given,
    into the PNG ``out_file`` (matplotlib's Agg canvas)."""
    from matplotlib.figure import Figure
    rows, heights = ['curves'], []
    num_curves = 1 + len({k for _, val in runs.values() for k in val})
    heights.append(PANEL_SIZE[1] * math.ceil(num_curves / PANELS_PER_ROW))
    if grid is not None:
        rows.append('grid')
        heights.append(GRID_HEIGHT)
    if code_counts:
        rows.append('usage')
        heights.append(PANEL_SIZE[1] *
                       math.ceil(len(code_counts) / PANELS_PER_ROW))
    width = PANEL_SIZE[0] * min(max(num_curves, len(code_counts or ())),
                                PANELS_PER_ROW)
    width = max(width, 2 * PANEL_SIZE[0])
    fig = Figure(figsize=(width, sum(heights) + 0.4 * bool(title)),
                 layout='constrained')
    if title:
        fig.suptitle(title)
    subfigs = fig.subfigures(len(rows), 1, height_ratios=heights,
                             squeeze=False).ravel()
    for subfig, row in zip(subfigs, rows):
        if row == 'curves':
            draw_curves(subfig, runs)
        elif row == 'grid':
            draw_grid(subfig, grid, grid_step)
        else:
            draw_usage(subfig, code_counts)
    fig.savefig(out_file, dpi=dpi)


# ---------------------------------------------------------------- the hook
@HOOKS.register_module()
class RunSummaryHook(Hook):
    """At the end of training, draw the run on one sheet:
    ``{work_dir}/summary.png``.

    The sheet holds

    * the training-loss and validation-metric curves over iterations, read
      from the run's ``scalars.json`` (mmengine's ``LocalVisBackend``, see
      :func:`find_scalars` / :func:`read_scalars`);
    * the first ``num_images`` validation images over their
      reconstructions at the last validation: the ``gt_img`` /
      ``pred_img`` (``(C, H, W)`` in [0, 255]) of the predicted samples,
      taken as the validation loop passes (no extra forward; rank 0's
      first samples; with the model's EMA copy when it validates with it);
    * the codebook usage of that validation: per quantizer level (the
      samples' ``token_levels`` and metainfo ``level_codebook_sizes``,
      as ``CodebookUsage`` reads them; else ``tokens`` and
      ``codebook_size`` as one level), the code counts sorted by frequency,
      summed over the ranks.

    The grid and the histograms are also written to
    ``{work_dir}/summary.npz`` (see :func:`save_summary_data`), which
    ``tools/analysis/plot_run.py`` redraws. The hook never fails the run:
    whatever it cannot draw (no validation, samples without images or
    tokens, an error while drawing) is left out with a warning in the log
    naming it. Training is unaffected (it only reads the validation
    outputs), and the sheet is drawn on rank 0 only.

    Args:
        num_images: validation images in the grid.
        nrow: images per row of the grid.
        out_file: the sheet's file name in the work dir (the data goes
            next to it, with the suffix ``.npz``).
        dpi: resolution of the PNG.
    """

    # after LoggerHook (BELOW_NORMAL) wrote the last validation's scalars
    priority = 'LOWEST'

    def __init__(self,
                 num_images: int = 8,
                 nrow: int = 8,
                 out_file: str = SUMMARY_PNG,
                 dpi: int = 100):
        for name, value in (('num_images', num_images), ('nrow', nrow),
                            ('dpi', dpi)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'RunSummaryHook: {name} must be a '
                                 f'positive int, got {value!r}')
        if not out_file.endswith('.png'):
            raise ValueError(f'RunSummaryHook: out_file must name a .png '
                             f'file, got {out_file!r}')
        self.num_images = num_images
        self.nrow = nrow
        self.out_file = out_file
        self.dpi = dpi
        self._reset_capture()
        self.grid: Optional[np.ndarray] = None
        self.grid_step: Optional[int] = None
        self.code_counts: Dict[str, torch.Tensor] = {}
        self._problems: List[str] = []

    def _reset_capture(self) -> None:
        self._inputs, self._recons = [], []
        self._counts: Dict[str, torch.Tensor] = {}
        self._capture_error: Optional[str] = None

    # --- capture during validation (every rank) --------------------------
    def before_val_epoch(self, runner) -> None:
        self._reset_capture()

    def after_val_iter(self, runner, batch_idx: int, data_batch=None,
                       outputs=None) -> None:
        if self._capture_error is not None:
            return
        try:
            for sample in outputs or []:
                self._capture(sample)
        except Exception as error:  # a summary never fails the run
            self._capture_error = f'{type(error).__name__}: {error}'

    def _capture(self, sample) -> None:
        if (len(self._inputs) < self.num_images and 'gt_img' in sample
                and 'pred_img' in sample):
            self._inputs.append(to_uint8_hwc(sample.gt_img))
            self._recons.append(to_uint8_hwc(sample.pred_img))
        if 'token_levels' in sample:
            sizes = sample.metainfo['level_codebook_sizes']
            levels = {name: (tokens, sizes[name])
                      for name, tokens in sample.token_levels.items()}
        elif 'tokens' in sample and 'codebook_size' in sample:
            levels = {'': (sample.tokens, sample.codebook_size)}
        else:
            return
        for name, (tokens, size) in levels.items():
            tokens = torch.as_tensor(tokens).detach().cpu().reshape(-1)
            counts = torch.bincount(tokens[tokens >= 0].long(),
                                    minlength=int(size))
            if name in self._counts:
                self._counts[name] += counts
            else:
                self._counts[name] = counts

    def after_val_epoch(self, runner, metrics=None) -> None:
        counts = {name: c.clone() for name, c in self._counts.items()}
        if counts and get_world_size() > 1:
            # every rank validates the same model: the same levels
            all_reduce_dict(counts, op='sum')
        self.code_counts = counts
        self.grid, self.grid_step = None, runner.iter
        self._problems = []
        if self._capture_error is not None:
            self._problems.append(f'reading the validation samples failed '
                                  f'({self._capture_error})')
        if self._inputs:
            try:
                self.grid = reconstruction_grid(self._inputs, self._recons,
                                                nrow=self.nrow)
            except ValueError as error:
                self._problems.append(f'no reconstruction grid ({error})')
        elif self._capture_error is None:
            self._problems.append(
                f'no reconstruction grid: the validation samples of '
                f'{_model_name(runner)} carry no gt_img / pred_img')
        if not counts and self._capture_error is None:
            self._problems.append(
                f'no codebook usage: the validation samples of '
                f'{_model_name(runner)} carry no token_levels / tokens')
        self._reset_capture()

    # --- the sheet (rank 0) ----------------------------------------------
    def after_train(self, runner) -> None:
        if not is_main_process():
            return
        problems = list(self._problems)
        if self.grid_step is None:
            problems.append('no reconstruction grid or codebook usage: the '
                            'run had no validation')
        for problem in problems:
            runner.logger.warning(f'RunSummaryHook: {problem}')
        out_file = osp.join(runner.work_dir, self.out_file)
        try:
            self.write(runner.work_dir, out_file)
        except Exception as error:  # a summary never fails the run
            runner.logger.warning(
                f'RunSummaryHook: {out_file} not written '
                f'({type(error).__name__}: {error})')
            return
        runner.logger.info(f'RunSummaryHook: run summary written to '
                           f'{out_file}')

    def write(self, work_dir: str, out_file: str) -> None:
        """Save the captured data next to ``out_file`` and draw the sheet
        with the curves of ``work_dir``'s ``scalars.json`` files."""
        code_counts = {name: counts.numpy()
                       for name, counts in self.code_counts.items()}
        save_summary_data(osp.splitext(out_file)[0] + '.npz', self.grid,
                          self.grid_step, code_counts)
        curves = read_scalars(find_scalars(work_dir))
        draw_sheet(out_file, {osp.basename(work_dir.rstrip('/')): curves},
                   grid=self.grid, grid_step=self.grid_step,
                   code_counts=code_counts,
                   title=osp.basename(work_dir.rstrip('/')), dpi=self.dpi)


def _model_name(runner) -> str:
    model = runner.model
    return type(getattr(model, 'module', model)).__name__
