"""Estimate the per-rank training memory of a config under DDP or FSDP.

    python tools/analysis/estimate_memory.py CONFIG [--gpus 8]
        [--strategy ddp|fsdp|both] [--gpu-memory 80GiB] [--batch-size B]
        [--input-shape C D H W] [--cfg-options k=v ...] [--json]

Builds the model on the meta device (seconds, no weights, no data) and
counts, per rank: trainable parameters, gradients, optimizer state (the
config's optimizers stepped once on a probe parameter per group), the EMA
copy, frozen parameters and buffers, FSDP's gathered units, and the
activations one training forward saves for the backward pass at the
per-GPU batch (saved-tensor hooks on the meta forward: one count per
storage, parameters excluded; with FSDP activation checkpointing: outside
the blocks + every block's inputs + the largest block's own). Sharding
follows vistok.engine.fsdp.plan_fully_shard: sharded parts take
ceil(dim0 / N) rows of each parameter, gradient and optimizer state per
rank; replicated and frozen parts and buffers stay whole. The full rules
and what is not counted: vistok/engine/memory.py.
"""
import argparse
import json
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))))

from mmengine.config import Config, DictAction  # noqa: E402

import vistok.engine.memory as memory  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog=__doc__.split('\n\n', 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--gpus', type=int, default=8,
                        help='number of ranks (default: 8)')
    parser.add_argument('--strategy', choices=('ddp', 'fsdp', 'both'),
                        default='both')
    parser.add_argument('--gpu-memory', default='80GiB',
                        help='memory of one GPU, e.g. 80GiB, 40GB')
    parser.add_argument('--batch-size', type=int, default=None,
                        help='per-GPU batch (default: the config\'s '
                        'train_dataloader.batch_size)')
    parser.add_argument('--input-shape', type=int, nargs='+', default=None,
                        help='(C, *spatial) of one training input '
                        '(default: from crop_size / image_size)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    parser.add_argument('--json', action='store_true',
                        help='print the estimates as JSON (bytes)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.gpus < 1:
        raise SystemExit(f'--gpus must be at least 1, got {args.gpus}')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    gpu_memory = memory.parse_size(args.gpu_memory)
    strategies = (('ddp', 'fsdp') if args.strategy == 'both' else
                  (args.strategy, ))
    rows = []
    for strategy in strategies:
        start = time.perf_counter()
        estimate = memory.estimate_config(cfg, strategy, args.gpus,
                                   args.batch_size, args.input_shape)
        row = estimate.as_dict()
        row.update(fits=estimate.fits(gpu_memory),
                   seconds=round(time.perf_counter() - start, 2))
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
        return rows
    sizes = list(memory.COLUMNS) + ['total']
    header = ['strategy'] + sizes + ['fits', 'seconds']
    print(f'{osp.basename(args.config)}: GiB per rank on {args.gpus} '
          f'ranks, fits in {args.gpu_memory}?')
    print('| ' + ' | '.join(header) + ' |')
    print('|' + ' --- |' * len(header))
    for row in rows:
        cells = [row['strategy']] + [
            f'{row[name] / memory.GIB:.2f}' for name in sizes] + [
                'yes' if row['fits'] else 'no', f'{row["seconds"]:.1f}']
        print('| ' + ' | '.join(cells) + ' |')
    return rows


if __name__ == '__main__':
    main()
