"""Convert VAR's multi-scale VQVAE tokenizer (``vae_ch160v4096z32.pth``,
FoundationVision/VAR) to vistok's AutoencoderTokenizer.

    python tools/model_converters/var_vqvae.py IN OUT
        [--config CONFIG] [--trust-checkpoint]
        [--allow-missing REGEX ...] [--ignore-unmapped REGEX ...]
        [--cfg-options k=v ...]

IN is the released plain state dict of VAR's ``VQVAE`` (Tian et al. 2024;
``https://huggingface.co/FoundationVision/var``, loads safely). OUT
(``.safetensors`` or ``.pth``) loads with ``load_state_dict(strict=True)``
into CONFIG's model (default:
``configs/var/var-vqvae_msrq-4k_conv-f16_8xb12-400k_in1k-256.py``), works
with ``tools/test.py`` and ``vistok.apis.load_tokenizer``, and is the
``quantizer_weights`` file of the VAR generator configs (its
``quantizer.*`` tensors are the frozen multi-scale quantizer), e.g.::

    python tools/model_converters/var_vqvae.py vae_ch160v4096z32.pth \\
        checkpoints/var_tokenizer_vistok.pth

The key mapping (the fused attention ``qkv`` convs are split into q / k /
v), the dropped usage buffer ``quantize.ema_vocab_hit_SV`` and the config
checks are documented with the rules in
``vistok/apis/converters/var_vqvae.py``. Anything else unmapped or missing
stops the conversion with a report.
"""
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

from vistok.apis.convert import converter_main  # noqa: E402
from vistok.apis.converters import var_vqvae  # noqa: E402

DEFAULT_CONFIG = osp.join(
    REPO_ROOT, 'configs/var/var-vqvae_msrq-4k_conv-f16_8xb12-400k_in1k-256.py')


def check(args, official, model):
    """:func:`vistok.apis.converters.var_vqvae.check_layout`."""
    return var_vqvae.check_layout(official, model)


def main(argv=None):
    """Convert, check that the result loads strictly and write it; returns
    the :class:`~vistok.utils.convert.ConversionReport`."""
    return converter_main(
        argv,
        description="Convert VAR's multi-scale VQVAE (vae_ch160v4096z32.pth) "
        'to vistok.',
        rules_for=var_vqvae.rules_for,
        default_config=DEFAULT_CONFIG,
        allow_missing=var_vqvae.ALLOW_MISSING,
        ignore_unmapped=var_vqvae.IGNORE_UNMAPPED,
        check=check)


if __name__ == '__main__':
    main()
