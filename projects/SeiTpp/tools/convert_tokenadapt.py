"""Convert the released TokenAdapt weights (SeiT++'s
``weights/tokenadapt.ckpt`` of naver-ai/seit; the layout of
naver-ai/tokenadapt) to vistok's TokenAdapt
(projects/SeiTpp/seitpp/token_adapt.py).

    python projects/SeiTpp/tools/convert_tokenadapt.py IN OUT
        [--config CONFIG] [--trust-checkpoint]
        [--allow-missing REGEX ...] [--ignore-unmapped REGEX ...]
        [--cfg-options k=v ...]

IN holds the ``conversion_function.*`` / ``reverse_transform.*`` tensors of
the official classifier (top level, or under ``'model'`` / ``'state_dict'``;
other classifier keys are ignored and counted). A file holding more than
tensors (e.g. a training checkpoint with its ``args``) needs
``--trust-checkpoint`` to be unpickled: only for a file from a source you
trust. OUT (``.pth``, a ``{'state_dict': ...}`` of ``f.*`` / ``g.*``, or
``.safetensors``) loads strictly into CONFIG's TokenAdapt and is what a
config's ``model.data_preprocessor.token_adapt_checkpoint`` takes. CONFIG
(default: the SeiT++ ViT-B fine-tuning config) is any config with a
TokenAdapt: its ``model`` (type TokenAdapt), its
``model.data_preprocessor.token_adapt`` or its ``model.token_adapt``;
``--cfg-options`` address that config (e.g.
``model.data_preprocessor.token_adapt.num_codes=391``).

The key mapping and the checks of the layout and of the config are
documented with the rules in ``projects/SeiTpp/seitpp/convert.py``.
"""
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))))
sys.path.insert(0, REPO_ROOT)

from projects.SeiTpp.seitpp import convert  # noqa: E402
from vistok.apis.convert import converter_main  # noqa: E402

DEFAULT_CONFIG = osp.join(REPO_ROOT, 'projects/SeiTpp/configs',
                          'seitpp_vitvq-391_vit-b_8xb128-100e_in1k-tok32.py')


def check(args, official, model):
    """:func:`projects.SeiTpp.seitpp.convert.check_layout`."""
    return convert.check_layout(official, model)


def main(argv=None):
    """Convert, check that the result loads strictly and write it; returns
    the :class:`~vistok.utils.convert.ConversionReport`."""
    return converter_main(
        argv,
        description='Convert the released TokenAdapt weights (SeiT++) to '
        'vistok.',
        rules_for=convert.rules_for,
        default_config=DEFAULT_CONFIG,
        check=check,
        build_model=convert.build_token_adapt)


if __name__ == '__main__':
    main()
