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

Key mapping (TiTok ``modeling/modules/maskgit_vqgan.py``; vistok
``vistok/models/backbones/conv.py`` with the MaskGIT options):

* ``{encoder,decoder}.mid.0.*`` / ``.mid.1.*`` -> ``.mid.block_1.*`` /
  ``.mid.block_2.*``
* ``decoder.up.{i}.upsample_conv.*`` -> ``decoder.up.{i}.resample.conv.*``
* ``quantize.embedding.weight`` -> ``quantizer.codebook``
* every other ``encoder.*`` / ``decoder.*`` key keeps its name;
* every tensor is also copied to the EMA copy ``ema.*`` when the config
  keeps one.

The release has no discriminator: ``discriminator.*``, the LeCam statistics
and ``ema.num_updates`` keep their initial values. Anything else unmapped or
missing stops the conversion with a report.
"""
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

from vistok.utils.convert import converter_main, with_copies  # noqa: E402

DEFAULT_CONFIG = osp.join(
    REPO_ROOT, 'configs/maskgit_vqgan/'
    'maskgit-vqgan_vq-1k_conv-f16_8xb32-500k_in1k-256.py')

#: (TiTok pattern, vistok replacement)
RULES = [
    (r'(encoder|decoder)\.mid\.0\.(.+)', r'\1.mid.block_1.\2'),
    (r'(encoder|decoder)\.mid\.1\.(.+)', r'\1.mid.block_2.\2'),
    (r'decoder\.up\.(\d+)\.upsample_conv\.(.+)',
     r'decoder.up.\1.resample.conv.\2'),
    (r'quantize\.embedding\.weight', 'quantizer.codebook'),
    (r'((?:encoder|decoder)\..+)', r'\1'),
]
#: vistok keys without a counterpart in the release
ALLOW_MISSING = (r'discriminator\..+',
                 r'adversarial_loss\.lecam_ema_(real|fake)',
                 r'ema\.num_updates')


def rules_for(model) -> list:
    """:data:`RULES`, also writing to the EMA copy of ``model`` (an
    AutoencoderTokenizer) when it keeps one."""
    if getattr(model, 'ema', None) is not None:
        return with_copies(RULES, 'ema.')
    return list(RULES)


def main(argv=None):
    return converter_main(
        argv,
        description='Convert the MaskGIT-VQGAN weights released with TiTok '
        'to vistok.',
        rules_for=rules_for,
        default_config=DEFAULT_CONFIG,
        allow_missing=ALLOW_MISSING)


if __name__ == '__main__':
    main()
