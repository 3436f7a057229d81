"""Convert VAR's released transformers to vistok's VARGenerator
(vistok/models/generators/var.py).

    python tools/model_converters/var.py IN OUT
        [--config CONFIG] [--trust-checkpoint]
        [--allow-missing REGEX ...] [--ignore-unmapped REGEX ...]
        [--cfg-options k=v ...]

IN is ``var_d{16,20,24,30}.pth`` of the ``FoundationVision/var`` Hugging
Face repository: the plain state dict of ``VAR`` (Tian et al. 2024,
"Visual Autoregressive Modeling"; FoundationVision/VAR ``models/var.py``).
OUT (``.safetensors`` or ``.pth``) loads with
``load_state_dict(strict=True)`` into CONFIG's model (default: VAR-d16,
``configs/var/var_msrq-4k_d16_8xb96-200e_in1k-256.py``). For d20 / d24 /
d30 pass ``--cfg-options model.depth=20`` (and so on): width, heads and
stochastic depth follow the depth as in VAR's ``build_vae_var``. A
checkpoint of another depth, head count, scale list or AdaLN layout than
the config is refused with the config key to change.

The frozen quantizer is not in IN: sample with the converted VQVAE
(``tools/model_converters/var_vqvae.py``) as the tokenizer, e.g.
``tools/sample.py CONFIG OUT --tokenizer-config TOK_CONFIG
--tokenizer-checkpoint TOK_CKPT``, which fills ``model.quantizer_weights``.
VAR's FID setting ``cfg=1.5`` is ``sampler.guidance_scale=2.5`` with
``guidance_schedule='linear'`` (vistok's scale is ``1 + cfg``).

The key mapping and the buffers dropped after checking them are
documented with the rules in ``vistok/apis/converters/var.py``.
"""
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

from vistok.apis.convert import converter_main  # noqa: E402
from vistok.apis.converters import var  # noqa: E402

DEFAULT_CONFIG = osp.join(REPO_ROOT, 'configs/var',
                          'var_msrq-4k_d16_8xb96-200e_in1k-256.py')


def check(args, official, model):
    """:func:`vistok.apis.converters.var.check_layout`."""
    return var.check_layout(official, model)


def main(argv=None):
    """Convert, check that the result loads strictly and write it; returns
    the :class:`~vistok.utils.convert.ConversionReport`."""
    return converter_main(
        argv,
        description="Convert VAR's released transformers (var_d*.pth) to "
        'vistok.',
        rules_for=var.rules_for,
        default_config=DEFAULT_CONFIG,
        allow_missing=var.ALLOW_MISSING,
        ignore_unmapped=var.IGNORE_UNMAPPED,
        check=check,
        build_model=var.build_generator)


if __name__ == '__main__':
    main()
