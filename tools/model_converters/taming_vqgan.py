"""Convert a taming-transformers VQGAN checkpoint to vistok's
AutoencoderTokenizer.

    python tools/model_converters/taming_vqgan.py IN OUT
        [--config CONFIG] [--trust-checkpoint]
        [--allow-missing REGEX ...] [--ignore-unmapped REGEX ...]
        [--cfg-options k=v ...]

IN is a checkpoint of taming's ``VQModel`` (Esser et al. 2021; e.g.
``vqgan_imagenet_f16_16384/checkpoints/last.ckpt``, a PyTorch Lightning file:
pass ``--trust-checkpoint`` to unpickle it, only for a file from a source
you trust). OUT (``.safetensors`` or ``.pth``) loads with
``load_state_dict(strict=True)`` into CONFIG's model (default: the f16-16384
config) and works with ``tools/test.py`` and ``vistok.apis.load_tokenizer``.

The key mapping, what is dropped (LPIPS) and what keeps its initial value
(the LeCam statistics, ``ema.num_updates``) are documented with the rules in
``vistok/apis/converters/taming_vqgan.py``. Anything else unmapped or
missing stops the conversion with a report.
"""
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

from vistok.apis.convert import converter_main  # noqa: E402
from vistok.apis.converters import taming_vqgan  # noqa: E402

DEFAULT_CONFIG = osp.join(
    REPO_ROOT, 'configs/vqgan/vqgan_vq-16k_conv-f16_8xb12-400k_in1k-256.py')


def main(argv=None):
    return converter_main(
        argv,
        description='Convert a taming-transformers VQGAN checkpoint to '
        'vistok.',
        rules_for=taming_vqgan.rules_for,
        default_config=DEFAULT_CONFIG,
        allow_missing=taming_vqgan.ALLOW_MISSING,
        ignore_unmapped=taming_vqgan.IGNORE_UNMAPPED)


if __name__ == '__main__':
    main()
