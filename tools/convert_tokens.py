"""Convert stored tokens between formats, losslessly (checked by re-reading).

    python tools/convert_tokens.py SRC DST --to {wds,seit,compact}
        [--from {wds,seit,compact}] [--model {order0,context}]
        [--shard-size N] [--grid H W] [--codebook-size K]
        [--label-file F] [--src-label-file F] [--src-codebook-file F]
        [--codebook-file F] [--drop-sample-idx] [--overwrite]

SRC / DST: a token-shard directory (wds), a ``*-token.data.bin.gz`` file
(SeiT; its index and label files sit beside it) or a compact ``.vtok``
file. SeiT stores neither the grid nor the codebook size: give ``--grid``
and ``--codebook-size`` (or ``--src-codebook-file``) when reading it. See
:mod:`vistok.datasets.token_convert` for what each format keeps.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from vistok.datasets.token_convert import FORMATS, convert_tokens  # noqa


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='tokens to read')
    parser.add_argument('dst', help='where to write them')
    parser.add_argument('--to', required=True, choices=FORMATS,
                        help='format of DST')
    parser.add_argument('--from', dest='src_format', choices=FORMATS,
                        help='format of SRC (default: detected)')
    parser.add_argument('--model', default='order0',
                        choices=['order0', 'context'],
                        help='entropy model of a compact DST')
    parser.add_argument('--shard-size', type=int, default=1000,
                        help='samples per shard of a wds DST')
    parser.add_argument('--grid', type=int, nargs='+',
                        help='token grid of a SeiT SRC, e.g. 32 32')
    parser.add_argument('--codebook-size', type=int,
                        help='codebook size of a SeiT SRC')
    parser.add_argument('--src-label-file',
                        help='label file of a SeiT SRC (default: '
                        '<name>-label.txt when it exists)')
    parser.add_argument('--src-codebook-file',
                        help='codebook.ckpt of a SeiT SRC')
    parser.add_argument('--label-file', help='label file of a SeiT DST '
                        '(default: <name>-label.txt)')
    parser.add_argument('--codebook-file', help='where a SeiT DST gets the '
                        'codebook of --src-codebook-file')
    parser.add_argument('--drop-sample-idx', action='store_true',
                        help='allow a SeiT DST to drop a sample_idx that is '
                        'not 0 .. N - 1')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an existing DST')
    args = parser.parse_args(argv)
    if args.shard_size < 1:
        parser.error('--shard-size must be >= 1')
    if args.codebook_file and not args.src_codebook_file:
        parser.error('--codebook-file needs --src-codebook-file')
    return args


def main(argv=None):
    args = parse_args(argv)
    result = convert_tokens(
        args.src, args.dst, args.to, args.src_format, grid=args.grid,
        codebook_size=args.codebook_size,
        src_label_file=args.src_label_file,
        src_codebook_file=args.src_codebook_file, model=args.model,
        shard_size=args.shard_size, label_file=args.label_file,
        codebook_file=args.codebook_file,
        drop_sample_idx=args.drop_sample_idx, overwrite=args.overwrite)
    print(json.dumps(result, indent=1))
    return result


if __name__ == '__main__':
    main()
