"""Reconstruct your own images with a trained tokenizer.

    python tools/reconstruct.py CONFIG CHECKPOINT INPUTS... --out DIR
        [--size N] [--device cpu] [--cfg-options k=v ...]
        [--trust-checkpoint]

INPUTS are image files and folders (walked recursively, files in sorted
order). Any size: each image is resized (bicubic) so its short side is the
tokenizer's input size, then centre-cropped to a square of that size — a
1x1 image is resized too. The input size is the config's ``image_size``
(``--size`` overrides it, e.g. for a convolutional tokenizer at another
multiple of its downsampling factor). Grayscale, palette and 16-bit images
become RGB; transparency is composited onto white.

Written to DIR, per image (NAME: the file name; for a file found in a
folder, ``<folder>__<subfolders>__<file>``):

* ``NAME.recon.png``: input (as the model saw it) | reconstruction;
* ``NAME.tokens.png``: its token grid, one cell per token position, each
  code id in a fixed colour (the same id, the same colour, in every
  image); a 1-D tokenizer's sequence is one row of cells, a trailing depth
  / branch axis and the levels of multi-scale / hierarchical quantizers
  are panels left to right;

and for the run ``metrics.csv`` (file, width, height of the original
image, tokens_shape, psnr, ssim, side_by_side, token_grid) and
``skipped.csv`` (file, reason). PSNR (dB) and SSIM are vistok's (those of
tools/test.py's PSNR / SSIM metrics) on the uint8 [0, 255] images of the
side-by-side PNG.

Files that are not readable images (text, empty, broken, missing) are
skipped with their reason, printed at the end and listed in
``skipped.csv``. Exit status: 0 when at least one image was reconstructed
(even if others were skipped), 1 when none was, 2 on a usage error (e.g. a
missing config or checkpoint).
"""
import argparse
import csv
import io
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config, DictAction

from vistok.apis.reconstruct import (
    METRICS_FIELDS,
    SKIPPED_FIELDS,
    find_images,
    input_size,
    reconstruct_files,
)
from vistok.apis.tokenize import load_tokenizer
from vistok.utils.checkpoint import (
    CheckpointLoadError,
    trust_pickled_checkpoints,
    write_text_atomic,
)
from vistok.utils.progress import progress
from vistok.utils.weights import MissingWeightsError

METRICS_CSV = 'metrics.csv'
SKIPPED_CSV = 'skipped.csv'
#: decimals of PSNR (dB) and SSIM in metrics.csv
CSV_DECIMALS = 6


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n', 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='tokenizer config file')
    parser.add_argument('checkpoint', help='training checkpoint (.pth, e.g. '
                        '$(cat work_dirs/demo/last_checkpoint)) or '
                        '.safetensors export of the tokenizer')
    parser.add_argument('inputs', nargs='+', metavar='INPUT',
                        help='image files and / or folders')
    parser.add_argument('--out', required=True, metavar='DIR',
                        help='output directory')
    parser.add_argument('--size', type=int, default=None,
                        help="square input size (default: the config's "
                        'image_size)')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, k=v')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow loading the checkpoint as a full pickle; '
                        'this can execute code from the file')
    return parser


def write_csv(path: str, fields, rows) -> None:
    """``rows`` (dicts) under a header of ``fields`` (floats to
    :data:`CSV_DECIMALS` decimals), written atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator='\n')
    writer.writeheader()
    for row in rows:
        writer.writerow({
            key: f'{value:.{CSV_DECIMALS}f}' if isinstance(value, float)
            else value for key, value in row.items()})
    write_text_atomic(text.getvalue(), path)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for kind, path in (('config', args.config),
                       ('checkpoint', args.checkpoint)):
        if not osp.isfile(path):
            parser.error(f'{kind} {path} does not exist')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.trust_checkpoint:
        trust_pickled_checkpoints(True)
    try:
        size = input_size(cfg, args.size)
        model = load_tokenizer(cfg, args.checkpoint, device=args.device)
    except (ValueError, CheckpointLoadError, MissingWeightsError) as err:
        parser.error(str(err))

    files = find_images(args.inputs)
    rows, skipped = reconstruct_files(
        model, files, args.out, size,
        wrap=lambda items: progress(items, total=len(items),
                                    desc='reconstruct', unit='img'))
    write_csv(osp.join(args.out, METRICS_CSV), METRICS_FIELDS, rows)
    write_csv(osp.join(args.out, SKIPPED_CSV), SKIPPED_FIELDS,
              [dict(file=f, reason=r) for f, r in skipped])

    print(f'reconstructed {len(rows)} image(s) at {size}x{size} into '
          f'{args.out} ({METRICS_CSV}, *.recon.png, *.tokens.png)')
    if rows:
        mean_psnr = sum(r['psnr'] for r in rows) / len(rows)
        print(f'mean PSNR {mean_psnr:.2f} dB')
    if skipped:
        print(f'skipped {len(skipped)} (listed in {SKIPPED_CSV}):')
        for path, reason in skipped:
            print(f'  {path}: {reason}')
    return 0 if rows else 1


if __name__ == '__main__':
    sys.exit(main())
