"""Convert the ImageFolder tokenizers released by the authors to vistok's
ImageFolderTokenizer (projects/ImageFolder/imagefolder/tokenizer.py).

    python tools/model_converters/imagefolder.py IN OUT
        [--config CONFIG] [--weights {model,ema}] [--trust-checkpoint]
        [--allow-missing REGEX ...] [--ignore-unmapped REGEX ...]
        [--cfg-options k=v ...]

IN is a training checkpoint of ``VQModel`` of lxa9867/ImageFolder
``tokenizer/tokenizer_image/xqgan_model.py`` (Li et al., ICLR 2025,
"ImageFolder: Autoregressive Image Generation with Folded Tokens"):
``MSVR10P2-{4096,8192,16384}/best_ckpt.pt`` of the ``qiuk6/XQ-GAN``
Hugging Face repository. ``--weights`` picks its ``'model'`` entry (the
default) or its ``'ema'`` one (what the official VAR scripts load when
present). OUT (``.safetensors`` or ``.pth``) loads with
``load_state_dict(strict=True)`` into CONFIG's model (default: MSVR10P2-4096,
``projects/ImageFolder/configs/imagefolder_msvr10p2-4k_dinov2-b_8xb128-200e_in1k-256.py``;
pass the ``-8k`` / ``-16k`` config for the other codebook sizes).

The key mapping, the official keys dropped on purpose and the vistok keys
left at their initial values are documented with the rules in
``vistok/apis/converters/imagefolder.py``.
"""
import argparse
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

from vistok.apis.convert import converter_main, resolve_checkpoint  # noqa
from vistok.apis.converters import imagefolder  # noqa: E402

DEFAULT_CONFIG = osp.join(
    REPO_ROOT, 'projects/ImageFolder/configs',
    'imagefolder_msvr10p2-4k_dinov2-b_8xb128-200e_in1k-256.py')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--weights', choices=imagefolder.WEIGHT_ENTRIES,
                        default='model',
                        help="entry of the training checkpoint to convert "
                        "(default: 'model'; 'ema' is the EMA copy)")


def check(args, official, model):
    """``--weights ema``: swap the loaded ``'model'`` weights for the
    checkpoint's ``'ema'`` entry; then
    :func:`vistok.apis.converters.imagefolder.check_layout`."""
    if args.weights != 'model':
        path = resolve_checkpoint(args.checkpoint)
        if path.endswith('.safetensors'):
            raise ValueError(f'--weights {args.weights} needs the official '
                             f'training checkpoint (a torch file), got '
                             f'{path}')
        entry = imagefolder.load_entry(path, args.weights,
                                       trust=args.trust_checkpoint)
        official.clear()
        official.update(entry)
    ignore, note = imagefolder.check_layout(official, model)
    return ignore, f"'{args.weights}' weights, {note}"


def main(argv=None):
    """Convert, check that the result loads strictly and write it; returns
    the :class:`~vistok.utils.convert.ConversionReport`."""
    return converter_main(
        argv,
        description='Convert the ImageFolder tokenizers released by the '
        'authors to vistok.',
        rules_for=imagefolder.rules_for,
        default_config=DEFAULT_CONFIG,
        allow_missing=imagefolder.ALLOW_MISSING,
        ignore_unmapped=imagefolder.IGNORE_UNMAPPED,
        add_arguments=add_arguments,
        check=check)


if __name__ == '__main__':
    main()
