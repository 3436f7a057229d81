"""The EMmamba checkpoints released with TokenUnify (``cyd0806/TokenUnify``
on Hugging Face: pre-trained 100M / 200M / 500M / 1B and the fine-tuned
segmenters) -> vistok's ``EMMamba`` (``projects/TokenUnify``), inside an
``AffinitySegmentor`` or a ``TokenUnifyPretrainer`` (``backbone.*``) or on
its own; command line: ``tools/model_converters/tokenunify_emmamba.py``.

The releases are state dicts of ``SegMamba`` in ydchen0806/TokenUnify
``src/segmamba.py`` (``src/models_mamba.py`` builds the sizes; commit
221674f4c9b87efc730370dcf0443cf0f334c928), saved by the MAE-style
``misc.save_model`` under ``'model'`` (read by
:func:`vistok.utils.convert.load_official_state_dict`). Key mapping
(vistok: ``projects/TokenUnify/tokenunify/emmamba.py``):

* ``vit.downsample_layers.0.0`` (stem conv) and
  ``vit.downsample_layers.{i}.1`` (the conv after the InstanceNorm) ->
  ``encoder.downsamples.{i}.conv``;
* ``vit.gscs.{i}.proj{,2,3,4}`` -> ``encoder.gscs.{i}.proj{,2,3,4}``;
* ``vit.stages.{i}.{j}.norm`` / ``.mamba.*`` (``Mamba(bimamba_type="v3")``
  of ``mamba_local``: ``in_proj``, ``conv1d{,_b,_s}``, ``x_proj{,_b,_s}``,
  ``dt_proj{,_b,_s}``, ``A{,_b,_s}_log``, ``D{,_b,_s}``, ``out_proj``) ->
  ``encoder.stages.{i}.{j}.*`` (the same names in ``MambaMixer``);
* ``vit.mlps.{i}.fc1`` / ``fc2`` -> ``encoder.skip_mlps.{i}.fc1`` / ``fc2``;
* ``encoder{k}.*`` (MONAI ``UnetrBasicBlock``) -> ``skip_blocks.{k-1}.*``;
  ``decoder{k}.*`` (``UnetrUpBlock``, k = 5 .. 2) -> ``up_blocks.{5-k}.*``;
  ``decoder1.*`` -> ``decoder1.*`` (MONAI's inner names on both sides);
* ``out.conv.conv`` (``UnetOutBlock``) -> ``final_conv``.

The released model has no parameter vistok lacks (its InstanceNorms and
``vit.norm{i}`` have none). A ``module.`` prefix (a DistributedDataParallel
state dict) is accepted. Target keys with no counterpart
(:data:`ALLOW_MISSING`): the pre-trainer's ``mask_token`` (a learned fill,
absent from the release). The next-token head of the autoregressive
pre-training network (``preciever.*``, ``src/segmamba_ar.py``: a
fixed-size 16x160x160 head vistok does not build) is dropped with
:data:`IGNORE_UNMAPPED`.

Architecture facts the keys do not show, which the target config must
match (checked where the shapes tell, otherwise the user's choice): the
release runs the inter-slice scan with ``nslices=5`` at every stage, so a
config reproducing the released forward sets
``legacy_num_slices=5`` (vistok's default scans each stage's depth); the
fine-tuning network uses ``kernel_size=(1, 5, 5)`` and depths 2, the
autoregressive pre-training network ``(1, 3, 3)`` and depths 3 (a
mismatch is refused as a shape or missing-key error).
"""
import re
from typing import List, Optional, Tuple

import torch.nn as nn

from vistok.apis.converters import build_config_model

#: ``(official, vistok)`` patterns inside the EMmamba network (no prefix)
NETWORK_RULES = [
    (r'vit\.downsample_layers\.0\.0\.(weight|bias)',
     r'encoder.downsamples.0.conv.\1'),
    (r'vit\.downsample_layers\.(\d+)\.1\.(weight|bias)',
     r'encoder.downsamples.\1.conv.\2'),
    (r'vit\.gscs\.(\d+)\.(proj\d?)\.(weight|bias)',
     r'encoder.gscs.\1.\2.\3'),
    (r'vit\.stages\.(\d+)\.(\d+)\.(norm\.(?:weight|bias))',
     r'encoder.stages.\1.\2.\3'),
    (r'vit\.stages\.(\d+)\.(\d+)\.mamba\.(.+)',
     r'encoder.stages.\1.\2.mamba.\3'),
    (r'vit\.mlps\.(\d+)\.(fc[12])\.(weight|bias)',
     r'encoder.skip_mlps.\1.\2.\3'),
    (r'encoder1\.(.+)', r'skip_blocks.0.\1'),
    (r'encoder2\.(.+)', r'skip_blocks.1.\1'),
    (r'encoder3\.(.+)', r'skip_blocks.2.\1'),
    (r'encoder4\.(.+)', r'skip_blocks.3.\1'),
    (r'encoder5\.(.+)', r'skip_blocks.4.\1'),
    (r'decoder5\.(.+)', r'up_blocks.0.\1'),
    (r'decoder4\.(.+)', r'up_blocks.1.\1'),
    (r'decoder3\.(.+)', r'up_blocks.2.\1'),
    (r'decoder2\.(.+)', r'up_blocks.3.\1'),
    (r'decoder1\.(.+)', r'decoder1.\1'),
    (r'out\.conv\.conv\.(weight|bias)', r'final_conv.\1'),
]
#: an optional DistributedDataParallel prefix of the official keys
DDP_PREFIX = r'(?:module\.)?'
#: official keys vistok does not build (module docstring)
IGNORE_UNMAPPED = (DDP_PREFIX + r'preciever\..+', )
#: target keys the release does not hold
ALLOW_MISSING = (r'mask_token', )


class LayoutError(ValueError):
    """The model cannot take an EMmamba checkpoint."""


def backbone_prefix(model: nn.Module) -> str:
    """``'backbone.'`` for a model holding the EMmamba as ``backbone``
    (``AffinitySegmentor``, ``TokenUnifyPretrainer``), ``''`` for an
    ``EMMamba`` itself.

    Raises:
        LayoutError: neither holds an ``EMMamba`` encoder / decoder.
    """
    for prefix, network in (('backbone.', getattr(model, 'backbone', None)),
                            ('', model)):
        if network is not None and all(
                hasattr(network, name)
                for name in ('encoder', 'skip_blocks', 'up_blocks',
                             'decoder1', 'final_conv')):
            return prefix
    raise LayoutError(f'the config must build an EMMamba (as the model or '
                      f'its model.backbone), got a {type(model).__name__}')


def build_model(config: str, cfg_options: Optional[dict] = None):
    """The model of ``config`` (a file; ``cfg_options`` as
    ``--cfg-options``; its ``custom_imports`` imported), built without
    reading any weights file; it must hold an EMMamba
    (:func:`backbone_prefix`)."""
    model = build_config_model(config, cfg_options)
    backbone_prefix(model)
    return model


def rules_for(model: nn.Module) -> List[Tuple[str, str]]:
    """The rules into ``model``'s EMmamba (see :func:`backbone_prefix`)."""
    prefix = backbone_prefix(model)
    return [(DDP_PREFIX + pattern, prefix + target)
            for pattern, target in NETWORK_RULES]


def check_layout(official, model) -> Tuple[Tuple[str, ...], str]:
    """Refuse a model without an EMmamba, or a checkpoint that is not a
    ``SegMamba`` state dict; returns ``((), a line describing it)`` (the
    ``check`` of :func:`vistok.apis.convert.converter_main`)."""
    backbone_prefix(model)
    stages = sorted({
        int(match.group(1)) for key in official
        for match in [re.match(DDP_PREFIX + r'vit\.stages\.(\d+)\.', key)]
        if match
    })
    if not stages:
        raise LayoutError('the checkpoint has no vit.stages.* keys: not a '
                          'TokenUnify SegMamba (EMmamba) state dict')
    layers = len({
        key.split('.')[-3] for key in official
        if re.fullmatch(DDP_PREFIX + r'vit\.stages\.0\.\d+\.norm\.weight',
                        key)
    })
    has_head = any(re.fullmatch(IGNORE_UNMAPPED[0], k) for k in official)
    return (), (f'{len(stages)} stages, {layers} Mamba layers in the first'
                + ('; next-token head (preciever.*) dropped'
                   if has_head else ''))
