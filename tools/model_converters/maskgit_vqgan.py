"""Convert the MaskGIT-VQGAN weights released with TiTok to vistok's
AutoencoderTokenizer.

    python tools/model_converters/maskgit_vqgan.py IN OUT
        [--config CONFIG] [--allow-missing REGEX ...]
        [--ignore-unmapped REGEX ...] [--cfg-options k=v ...]

IN is ``maskgit-vqgan-imagenet-f16-256.bin`` (the MaskGIT tokenizer of Chang
et al. 2022 converted from JAX by the TiTok authors; a plain state dict of
TiTok's ``PretrainedTokenizer``, from the ``fun-research/TiTok`` model
repository on the Hugging Face Hub). OUT (``.safetensors`` or ``.pth``) loads
with ``load_state_dict(strict=True)`` into CONFIG's model (default:
``configs/maskgit_vqgan/maskgit-vqgan_vq-1k_conv-f16_8xb32-500k_in1k-256.py``).

The key mapping, and what keeps its initial value, is documented with the
rules in ``vistok/apis/converters/maskgit_vqgan.py``. Anything else unmapped
or missing stops the conversion with a report.
"""
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

from vistok.apis.convert import converter_main  # noqa: E402
from vistok.apis.converters import maskgit_vqgan  # noqa: E402

DEFAULT_CONFIG = osp.join(
    REPO_ROOT, 'configs/maskgit_vqgan/'
    'maskgit-vqgan_vq-1k_conv-f16_8xb32-500k_in1k-256.py')


def main(argv=None):
    return converter_main(
        argv,
        description='Convert the MaskGIT-VQGAN weights released with TiTok '
        'to vistok.',
        rules_for=maskgit_vqgan.rules_for,
        default_config=DEFAULT_CONFIG,
        allow_missing=maskgit_vqgan.ALLOW_MISSING)


if __name__ == '__main__':
    main()
