"""Convert the TiTok checkpoints released by the authors to vistok's
TiTokTokenizer (vistok/models/tokenizers/titok.py).

    python tools/model_converters/titok.py IN OUT
        [--config CONFIG] [--stage {1,2}] [--allow-non-legacy]
        [--trust-checkpoint] [--allow-missing REGEX ...]
        [--ignore-unmapped REGEX ...] [--cfg-options k=v ...]

IN is a state dict of TiTok's ``modeling/titok.py`` ``TiTok`` (Yu et al.
2024, "An Image is Worth 32 Tokens for Reconstruction and Generation";
bytedance/1d-tokenizer): ``tokenizer_titok_{l32,b64,s128}.bin`` of the
``fun-research/TiTok`` Hugging Face repository, or the snapshot directory
(or its ``model.safetensors`` / ``pytorch_model.bin``) of
``yucornetto/tokenizer_titok_{l32,b64,s128}_imagenet``. These are two-stage
models after stage 2: encoder, l2-normalised VQ, decoder with the
proxy-logit ``ffn`` and the fine-tuned MaskGIT-VQGAN codebook and decoder
(``pixel_quantize.*``, ``pixel_decoder.*``). OUT (``.safetensors`` or
``.pth``) loads with ``load_state_dict(strict=True)`` into CONFIG's model
(default: the stage-2 TiTok-L-32,
``configs/titok/titok_vq-4k_l32-stage2_8xb32-500k_in1k-256.py``;
``--stage 1``: the stage-1 ``titok_vq-4k_l32_8xb32-1m_in1k-256.py``, and the
release's pixel parts are dropped). B-64 / S-128: pass the ``b64`` /
``s128`` config of the same stage. The single-stage VQ-8k releases
(``is_legacy: False``, pixel decoder) need a config with ``head='pixel'``
and ``is_legacy=False``.

The key mapping is documented with the rules in
``vistok/apis/converters/titok.py`` (the stage-2 pixel decoder reuses the
MaskGIT-VQGAN rules of ``vistok/apis/converters/maskgit_vqgan.py``).

Latent layout (TiTok issue #17): the released two-stage checkpoints come
from an encoder that reshapes its ``(B, K, width)`` latent-token outputs to
``(B, width, K, 1)`` without a permute before ``conv_out``; they only work
with ``model.is_legacy=True``. The converter refuses to write them for an
``is_legacy=False`` model unless ``--allow-non-legacy`` (e.g. to fine-tune
the weights into the fixed layout), and refuses a single-stage
(non-legacy) checkpoint for an ``is_legacy=True`` model.
"""
import argparse
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

from vistok.apis.convert import converter_main  # noqa: E402
from vistok.apis.converters import titok  # noqa: E402

CONFIGS = osp.join(REPO_ROOT, 'configs/titok')
DEFAULT_CONFIGS = {
    1: osp.join(CONFIGS, 'titok_vq-4k_l32_8xb32-1m_in1k-256.py'),
    2: osp.join(CONFIGS, 'titok_vq-4k_l32-stage2_8xb32-500k_in1k-256.py'),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--stage', type=int, choices=(1, 2),
                        help='stage of the target model (default: that of '
                        '--config, else 2); 1 drops the pixel decoder of a '
                        'two-stage checkpoint')
    parser.add_argument('--allow-non-legacy', action='store_true',
                        help='write a legacy checkpoint (TiTok issue #17) '
                        'for a model with is_legacy=False')


def check(args, official, model):
    """:func:`vistok.apis.converters.titok.check_release` with the
    command line's ``--stage`` and ``--allow-non-legacy``."""
    return titok.check_release(official, model, args.stage,
                               args.allow_non_legacy)


def main(argv=None):
    """Convert, check that the result loads strictly and write it; returns
    the :class:`~vistok.utils.convert.ConversionReport`."""
    return converter_main(
        argv,
        description='Convert the TiTok checkpoints released by the authors '
        'to vistok.',
        rules_for=titok.rules_for,
        default_config=lambda args: DEFAULT_CONFIGS[args.stage or 2],
        allow_missing=titok.ALLOW_MISSING,
        ignore_unmapped=titok.IGNORE_UNMAPPED,
        add_arguments=add_arguments,
        check=check)


if __name__ == '__main__':
    main()
