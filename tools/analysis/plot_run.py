"""Draw the summary sheet of a finished training run, or compare the curves
of several runs in one figure.

    python tools/analysis/plot_run.py WORK_DIR [WORK_DIR ...] [--out PNG]

One WORK_DIR: the sheet ``RunSummaryHook`` draws at the end of training
(training-loss and validation-metric curves from the run's
``*/vis_data/scalars.json``; the reconstruction grid and the codebook-usage
histograms when the run saved them in ``summary.npz``), written to
``WORK_DIR/summary.png`` unless ``--out`` says otherwise. Several WORK_DIRs:
their curves in one figure (the total training loss and every validation
metric, one line per run), written to ``--out`` (default
``runs_compared.png`` in the current directory).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))))

from vistok.engine.hooks.run_summary_hook import (  # noqa: E402
    SUMMARY_DATA,
    SUMMARY_PNG,
    draw_sheet,
    find_scalars,
    load_summary_data,
    read_scalars,
)

COMPARE_PNG = 'runs_compared.png'


def run_name(work_dir: str) -> str:
    """The name a run is shown under: its work dir's last component."""
    return osp.basename(osp.normpath(work_dir))


def read_run(work_dir: str):
    """``(train, val)`` curves of ``work_dir``; a clear error when it holds
    no ``scalars.json``."""
    if not osp.isdir(work_dir):
        raise SystemExit(f'plot_run.py: {work_dir} is not a directory')
    paths = find_scalars(work_dir)
    if not paths:
        raise SystemExit(
            f'plot_run.py: {work_dir} holds no */vis_data/scalars.json '
            f'(a work dir of tools/train.py with a LocalVisBackend, as in '
            f'configs/_base_/default_runtime.py)')
    return read_scalars(paths)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='\n'.join(__doc__.splitlines()[4:]))
    parser.add_argument('work_dirs', nargs='+', metavar='WORK_DIR',
                        help='work dir(s) of finished training runs')
    parser.add_argument('--out', help='the PNG to write (default: '
                        f'WORK_DIR/{SUMMARY_PNG} for one run, '
                        f'{COMPARE_PNG} for several)')
    parser.add_argument('--dpi', type=int, default=100,
                        help='resolution of the PNG')
    args = parser.parse_args(argv)

    runs = {}
    for work_dir in args.work_dirs:
        name = run_name(work_dir)
        if name in runs:  # two runs of one name: tell them apart
            name = osp.normpath(work_dir)
        runs[name] = read_run(work_dir)
    if len(args.work_dirs) == 1:
        work_dir = args.work_dirs[0]
        out = args.out or osp.join(work_dir, SUMMARY_PNG)
        data_file = osp.join(work_dir, SUMMARY_DATA)
        data = dict(grid=None, grid_step=None, code_counts={})
        if osp.isfile(data_file):
            data = load_summary_data(data_file)
        else:
            print(f'{data_file} not found: curves only (RunSummaryHook '
                  f'saves the reconstruction grid and the code counts)')
        draw_sheet(out, runs, title=run_name(work_dir), dpi=args.dpi,
                   **data)
    else:
        out = args.out or COMPARE_PNG
        draw_sheet(out, runs, title=' vs '.join(runs), dpi=args.dpi)
    print(f'wrote {out}')
    return out


if __name__ == '__main__':
    main()
