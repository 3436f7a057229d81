"""Convert a ViT-VQGAN checkpoint of thuanz123/enhancing-transformers
(``ViTVQ``; the tokenizer of SeiT / SeiT++) to vistok's AutoencoderTokenizer
with ViT backbones.

    python tools/model_converters/vitvqgan.py IN OUT
        [--config CONFIG] [--codebook CODEBOOK] [--code-path DIR]
        [--trust-checkpoint] [--allow-missing REGEX ...]
        [--ignore-unmapped REGEX ...] [--cfg-options k=v ...]

IN is a PyTorch Lightning checkpoint of ``ViTVQ`` (e.g. the
``thuanz123/vitvqgan-imagenet-base`` release; pass ``--trust-checkpoint``
to unpickle it, only for a file from a source you trust), a plain state
dict, or SeiT's ``tokenizer.ckpt`` — a pickled model object: add
``--code-path`` with an enhancing-transformers checkout so it can be
unpickled, as SeiT's ``evaluate_on_images.py --tokenizer-code-path`` does.
``--codebook`` replaces the tokenizer's codebook with a ``(K, 32)`` table
(SeiT's 391-code ``codebook.ckpt``; use the SeiT config). OUT
(``.safetensors`` or ``.pth``) loads with ``load_state_dict(strict=True)``
into CONFIG's model (default: the base ImageNet config,
``configs/vitvqgan/vitvqgan_vq-8k-d32-l2_vit-b-p8_1xb8-100e_in1k-256.py``).

The key mapping, the checks of the layout and of the config, what is dropped
(the fixed sin-cos tables, ``loss.*``) and what keeps its initial value are
documented with the rules in ``vistok/apis/converters/vitvqgan.py``.
"""
import argparse
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

from vistok.apis.convert import converter_main  # noqa: E402
from vistok.apis.converters import vitvqgan  # noqa: E402

DEFAULT_CONFIG = osp.join(
    REPO_ROOT, 'configs/vitvqgan',
    'vitvqgan_vq-8k-d32-l2_vit-b-p8_1xb8-100e_in1k-256.py')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--codebook', help='a (K, code dim) tensor file to '
                        "use instead of the checkpoint's codebook (SeiT's "
                        'codebook.ckpt)')
    parser.add_argument('--code-path', help='enhancing-transformers checkout '
                        'put on sys.path to unpickle a model object (SeiT\'s '
                        'tokenizer.ckpt); needs --trust-checkpoint')


def check(args, official, model):
    """``--codebook``: swap the codebook in; then
    :func:`vistok.apis.converters.vitvqgan.check_layout`."""
    note = ''
    if args.codebook:
        codebook = vitvqgan.load_codebook(args.codebook,
                                          trust=args.trust_checkpoint)
        vitvqgan.replace_codebook(official, codebook)
        note = f'; codebook {tuple(codebook.shape)} from {args.codebook}'
    ignore, line = vitvqgan.check_layout(official, model)
    return ignore, line + note


def main(argv=None):
    """Convert, check that the result loads strictly and write it; returns
    the :class:`~vistok.utils.convert.ConversionReport`."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('--code-path')
    code_path = pre.parse_known_args(argv)[0].code_path
    if code_path:
        sys.path.insert(0, osp.abspath(code_path))
    return converter_main(
        argv,
        description='Convert an enhancing-transformers ViT-VQGAN (ViTVQ) '
        'checkpoint to vistok.',
        rules_for=vitvqgan.rules_for,
        default_config=DEFAULT_CONFIG,
        allow_missing=vitvqgan.ALLOW_MISSING,
        ignore_unmapped=vitvqgan.IGNORE_UNMAPPED,
        add_arguments=add_arguments,
        check=check)


if __name__ == '__main__':
    main()
