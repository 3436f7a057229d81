"""Evaluate a checkpoint on a config's test set.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE.pkl]
        [--show-dir DIR] [--cfg-options k=v ...] [--launcher ...]

On a terminal a progress bar (rate, ETA) follows the test batches; in a
log, mmengine's ``Iter(test) [k/N]  eta: ...`` lines come every
``default_hooks.logger.interval`` batches.
"""
import argparse
import os.path as osp
import sys

# the repository root on sys.path: vistok and projects.X.x (custom_imports)
# import from a checkout; other entry points need PYTHONPATH=.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config, DictAction  # noqa: E402

from vistok.apis import apply_cli_options, build_runner  # noqa: E402
from vistok.utils.dist import finalize_dist  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test a vistok model')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where logs and metrics go')
    parser.add_argument('--out', help='dump every prediction to this .pkl '
                        '(mmengine DumpResults)')
    parser.add_argument('--show-dir', help='save input / reconstruction '
                        'image pairs to this directory (relative paths are '
                        'inside the work dir)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'],
                        default='none', help='job launcher')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow loading the checkpoint as a full pickle; '
                        'this can execute code from the file')
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    apply_cli_options(cfg, work_dir=args.work_dir, load_from=args.checkpoint,
                      launcher=args.launcher, cfg_options=args.cfg_options)
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out must be a .pkl file, got {args.out}')
        evaluator = cfg.test_evaluator
        evaluator = list(evaluator) if isinstance(evaluator, (list, tuple)) \
            else [evaluator]
        evaluator.append(dict(type='DumpResults', out_file_path=args.out))
        cfg.test_evaluator = evaluator
    if args.show_dir is not None:
        cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [
            dict(type='SaveReconstructionsHook', out_dir=args.show_dir)]
    # a progress bar on a terminal; in a log, LoggerHook's lines have the ETA
    cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [
        dict(type='ProgressBarHook')]
    runner = build_runner(cfg, trust_checkpoint=args.trust_checkpoint)
    metrics = runner.test()
    finalize_dist()
    print({k: float(v) if hasattr(v, '__float__') else v
           for k, v in metrics.items()})
    return metrics


if __name__ == '__main__':
    main()
