"""Convert the EMmamba checkpoints released with TokenUnify to vistok's
EMMamba (projects/TokenUnify/tokenunify/emmamba.py).

    python tools/model_converters/tokenunify_emmamba.py IN OUT
        [--config CONFIG] [--trust-checkpoint]
        [--allow-missing REGEX ...] [--ignore-unmapped REGEX ...]
        [--cfg-options k=v ...]

IN is a state dict of ``SegMamba`` of ydchen0806/TokenUnify
``src/segmamba.py`` (the fine-tuned segmenters and the pre-trained
100M / 200M / 500M / 1B networks of the ``cyd0806/TokenUnify`` Hugging Face
repository; a training checkpoint with the weights under ``'model'`` works,
pass ``--trust-checkpoint`` if it also pickles the training arguments).
OUT (``.safetensors`` or ``.pth``) loads with ``load_state_dict(strict=
True)`` into CONFIG's model: an ``AffinitySegmentor`` or a
``TokenUnifyPretrainer`` with an ``EMMamba`` backbone (default: the MEC
fine-tuning config of EMmamba-base; pass the config of the released size,
e.g. ``--cfg-options model.backbone.arch=huge``, and ``out_channels=1`` for
a pre-trained network).

The released forward scans the inter-slice direction in 5 chunks at every
stage: add ``--cfg-options model.backbone.legacy_num_slices=5`` to the
config that runs the converted weights to reproduce it (vistok's default
scans each stage's depth; the weights are the same either way).

The key mapping and the keys dropped or left at their initial values are
documented with the rules in ``vistok/apis/converters/tokenunify_emmamba.py``.
"""
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

from vistok.apis.convert import converter_main  # noqa: E402
from vistok.apis.converters import tokenunify_emmamba  # noqa: E402

DEFAULT_CONFIG = osp.join(
    REPO_ROOT, 'projects/TokenUnify/configs',
    'emmamba-seg_affinity-3_emmamba-base_8xb6-400e_mec-16x160x160.py')


def check(args, official, model):
    """:func:`vistok.apis.converters.tokenunify_emmamba.check_layout`, and
    a note when the model does not run the released 5-chunk scan."""
    ignore, note = tokenunify_emmamba.check_layout(official, model)
    prefix = tokenunify_emmamba.backbone_prefix(model)
    network = model.backbone if prefix else model
    slices = {layer.mamba.num_slices for stage in network.encoder.stages
              for layer in stage}
    if slices != {5}:
        note += ('; the config scans inter-slice over each stage\'s depth, '
                 'the release in 5 chunks (model.backbone.'
                 'legacy_num_slices=5 reproduces it)')
    return ignore, note


def main(argv=None):
    """Convert, check that the result loads strictly and write it; returns
    the :class:`~vistok.utils.convert.ConversionReport`."""
    return converter_main(
        argv,
        description='Convert the EMmamba checkpoints released with '
        'TokenUnify to vistok.',
        rules_for=tokenunify_emmamba.rules_for,
        default_config=DEFAULT_CONFIG,
        allow_missing=tokenunify_emmamba.ALLOW_MISSING,
        ignore_unmapped=tokenunify_emmamba.IGNORE_UNMAPPED,
        check=check,
        build_model=tokenunify_emmamba.build_model)


if __name__ == '__main__':
    main()
