"""Convert TiTok's released MaskGIT generators to vistok's MaskGITGenerator
(vistok/models/generators/maskgit.py).

    python tools/model_converters/titok_generator.py IN OUT
        [--config CONFIG] [--trust-checkpoint]
        [--allow-missing REGEX ...] [--ignore-unmapped REGEX ...]
        [--cfg-options k=v ...]

IN is ``generator_titok_{s128,b64,l32}.bin`` of bytedance/1d-tokenizer
(Yu et al. 2024, "An Image is Worth 32 Tokens for Reconstruction and
Generation"; Hugging Face ``fun-research/TiTok``, or the snapshot directory
of ``yucornetto/generator_titok_{s128,b64,l32}_imagenet``,
``README_TiTok.md``): the state dict of ``UViTBert`` (S-128) or
``ImageBert`` (B-64, L-32) of ``modeling/maskgit.py``. OUT
(``.safetensors`` or ``.pth``) loads with ``load_state_dict(strict=True)``
into CONFIG's model (default: the S-128 U-ViT,
``configs/maskgit/maskgit_vq-4k_uvit-titok-s128_32xb64-500k_in1k-256.py``).
An ImageBert is a post-LN BERT: its config needs
``model.arch='titok-imagebert'`` and ``model.norm_eps=1e-12`` (and
``model.token_shape=(64, )`` or ``(32, )``), e.g. ``--cfg-options
model.arch=titok-imagebert model.norm_eps=1e-12 "model.token_shape=(32,)"``
on a B-64 / L-32 generator config. A checkpoint the config cannot take is
refused with the config key to change.

The key mapping (the class token shares TiTok's token table; BERT's
separate q / k / v are fused, its token-type row 0 folded into the
positions) is documented with the rules in
``vistok/apis/converters/titok_generator.py``.
"""
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

from vistok.apis.convert import converter_main  # noqa: E402
from vistok.apis.converters import titok_generator  # noqa: E402

DEFAULT_CONFIG = osp.join(REPO_ROOT, 'configs/maskgit',
                          'maskgit_vq-4k_uvit-titok-s128_32xb64-500k_'
                          'in1k-256.py')


def check(args, official, model):
    """:func:`vistok.apis.converters.titok_generator.check_layout`, then
    ``official`` replaced in place by its
    :func:`~vistok.apis.converters.titok_generator.prepare_official` form
    (ImageBert: fused q / k / v, token type folded into the positions)."""
    line = titok_generator.check_layout(official, model)
    prepared = titok_generator.prepare_official(official)
    official.clear()
    official.update(prepared)
    return (), line


def main(argv=None):
    """Convert, check that the result loads strictly and write it; returns
    the :class:`~vistok.utils.convert.ConversionReport`."""
    return converter_main(
        argv,
        description="Convert TiTok's released MaskGIT generators "
        '(generator_titok_*.bin: ImageBert, UViTBert) to vistok.',
        rules_for=titok_generator.rules_for,
        default_config=DEFAULT_CONFIG,
        allow_missing=titok_generator.ALLOW_MISSING,
        ignore_unmapped=titok_generator.IGNORE_UNMAPPED,
        check=check,
        build_model=titok_generator.build_generator)


if __name__ == '__main__':
    main()
