"""Train a model from a config.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [PATH|auto]]
        [--amp] [--cfg-options k=v ...] [--launcher none|pytorch|slurm]
        [--seed N] [--[no-]deterministic] [--trust-checkpoint]
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
    parser = argparse.ArgumentParser(description='Train a vistok model')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument(
        '--resume', nargs='?', const='auto', default=None, metavar='PATH',
        help='resume from PATH, or with no value (or "auto") from the newest '
        'checkpoint of the work dir that loads')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision (fp16 + loss scale on CUDA, '
                        'bf16 autocast on CPU)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. '
                        'train_cfg.max_iters=100 model.quantizer.beta=0.5')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'],
                        default='none', help='job launcher')
    parser.add_argument('--seed', type=int, help='random seed')
    parser.add_argument(
        '--deterministic', action=argparse.BooleanOptionalAction,
        default=None, help='PyTorch deterministic algorithms on / off '
        '(default: the config\'s randomness.deterministic; None there: on '
        'for CPU-only runs, off with CUDA)')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow loading checkpoints as full pickles; '
                        'this can execute code from the file')
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    apply_cli_options(cfg, work_dir=args.work_dir, resume=args.resume,
                      amp=args.amp, launcher=args.launcher, seed=args.seed,
                      deterministic=args.deterministic,
                      cfg_options=args.cfg_options)
    runner = build_runner(cfg, trust_checkpoint=args.trust_checkpoint)
    runner.train()
    finalize_dist()


if __name__ == '__main__':
    main()
