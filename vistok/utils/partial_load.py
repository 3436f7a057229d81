"""Load pretrained weights into a model, refusing silent partial loads.

``model.load_state_dict(state, strict=False)`` (TokenUnify's fine-tuning,
which also deletes every shape-mismatched key first) hides what did not
transfer: as released, the third Mamba layer of every stage and every
``(1, 3, 3)`` decoder kernel of the pre-trained network are dropped
without a word. :func:`load_pretrained` loads what matches and raises
:class:`PartialLoadError` for every other key unless a regex explicitly
allows it, e.g. fine-tuning a voxel-reconstruction network (1 output
channel) for affinities (3)::

    load_pretrained(segmentor.backbone, 'work_dirs/pretrain/last.pth',
                    prefix_map={'backbone.': ''},
                    allow_unexpected=[r'next_token_head\\..*'],
                    allow_shape_mismatch=[r'final_conv\\..*'])

The key bookkeeping is :func:`vistok.utils.convert.convert_state_dict`'s
(renaming rules, missing / unexpected / duplicate / shape checks); this
module adds the allowances for unexpected and shape-mismatched keys, and
the report is logged.
"""
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.logging import print_log

from vistok.utils.convert import (
    ConversionError,
    ConversionReport,
    Rule,
    Shape,
    convert_state_dict,
    format_key_list,
    target_shapes,
)
from vistok.utils.weights import load_state_dict_file

DEFAULT_HOW_TO_GET = ('Point it to a checkpoint of a run that trained this '
                      'network (e.g. the last checkpoint of the pre-training '
                      'run).')


@dataclass
class LoadReport(ConversionReport):
    """What :func:`load_pretrained` did with every checkpoint and model key.

    On top of :class:`~vistok.utils.convert.ConversionReport` (``mapping``
    is checkpoint key → model key after ``prefix_map``; ``missing`` /
    ``unexpected`` / ``shape_mismatches`` hold only the keys no pattern
    allows):

    Attributes:
        num_model_keys: number of keys of the model's state dict.
        loaded: model keys whose checkpoint tensor matches (and, unless
            refused, was loaded).
        allowed_unexpected: ``(checkpoint key, model key)`` the model lacks,
            dropped by an ``allow_unexpected`` pattern.
        allowed_shape_mismatches: ``(checkpoint key, model key, checkpoint
            shape, model shape)`` dropped by an ``allow_shape_mismatch``
            pattern; the model keeps its values.
    """
    num_model_keys: int = 0
    loaded: List[str] = field(default_factory=list)
    allowed_unexpected: List[Tuple[str, str]] = field(default_factory=list)
    allowed_shape_mismatches: List[Tuple[str, str, Shape, Shape]] = field(
        default_factory=list)

    def summary(self, limit: int = 20) -> str:
        """Counts, the allowed drops, then the problems (at most ``limit``
        keys per list)."""
        lines = [f'{self.source}: {len(self.loaded)} of '
                 f'{self.num_model_keys} model tensors match the '
                 f'checkpoint\'s {len(self.mapping)} tensors']
        if self.allowed_missing:
            lines.append(format_key_list(
                'allowed missing (keep their initial values)',
                self.allowed_missing, limit))
        if self.allowed_shape_mismatches:
            lines.append(format_key_list(
                'allowed shape mismatches (checkpoint -> model; the model '
                'keeps its initial values)',
                [f'{c} {tuple(sc)} -> {m} {tuple(sm)}'
                 for c, m, sc, sm in self.allowed_shape_mismatches], limit))
        if self.allowed_unexpected:
            lines.append(format_key_list(
                'allowed unexpected (not loaded)',
                [c if c == m else f'{c} (as {m})'
                 for c, m in self.allowed_unexpected], limit))
        # the problem lists of ConversionReport.summary, without its header
        lines += super().summary(limit).split('\n')[1:]
        return '\n'.join(lines)


class PartialLoadError(ConversionError):
    """A checkpoint would load only partly; ``report`` says what is wrong."""

    def __init__(self, report: LoadReport):
        self.report = report
        ValueError.__init__(
            self, f'refusing a partial load of {report.summary()}\nAllow '
            f'keys explicitly with allow_missing / allow_unexpected / '
            f'allow_shape_mismatch regexes, or rename them with prefix_map.')


def prefix_rules(prefix_map: Optional[Mapping[str, str]]) -> List[Rule]:
    """Renaming rules: a checkpoint key starting with a ``prefix_map`` key
    gets that prefix replaced by its value (the longest matching prefix
    wins); any other key is kept as it is."""
    rules = [
        Rule(re.escape(old) + '(.*)',
             new.replace('\\', '\\\\') + r'\g<1>')
        for old, new in sorted((prefix_map or {}).items(),
                               key=lambda item: -len(item[0]))
    ]
    return rules + [Rule('(.*)', r'\g<1>')]


def _allowed(patterns: Sequence[str], *keys: str) -> bool:
    return any(re.fullmatch(p, k) for p in patterns for k in keys)


def load_pretrained(model: nn.Module,
                    checkpoint: Union[str, Mapping[str, torch.Tensor]],
                    prefix_map: Optional[Mapping[str, str]] = None,
                    allow_missing: Sequence[str] = (),
                    allow_unexpected: Sequence[str] = (),
                    allow_shape_mismatch: Sequence[str] = (),
                    select: Optional[Sequence[str]] = None,
                    key: str = 'checkpoint',
                    how_to_get: str = DEFAULT_HOW_TO_GET,
                    logger: Union[str, object] = 'current') -> LoadReport:
    """Load ``checkpoint`` into ``model``, all of it or nothing unexpected.

    Args:
        model: the network to fill (its ``state_dict()`` keys are the
            target).
        checkpoint: a state dict, or the path of a ``.pth`` / ``.pt`` /
            ``.bin`` / ``.safetensors`` file (loaded safely; ``state_dict``
            / ``model`` wrappers unwrapped).
        prefix_map: checkpoint key prefix → model key prefix, e.g.
            ``{'backbone.': ''}`` to load an algorithm's backbone into the
            bare network (see :func:`prefix_rules`).
        allow_missing: regexes (``re.fullmatch``) of model keys the
            checkpoint may lack; they keep their values.
        allow_unexpected: regexes of checkpoint keys (matched before or
            after ``prefix_map``) the model may lack; they are dropped.
        allow_shape_mismatch: regexes of model keys whose checkpoint tensor
            may have another shape (e.g. a 1- vs 3-channel head); they keep
            their values.
        select: regexes of the checkpoint keys to use (matched before
            ``prefix_map``); the others are ignored, as if the file did not
            hold them (e.g. only ``pixel_.*`` of a whole model; name the
            model keys left alone in ``allow_missing``). ``None``: all.
        key: config key that set ``checkpoint``, named if the file is
            missing.
        how_to_get: how the user obtains the file, for that message.
        logger: where the report is logged (``mmengine.logging.print_log``).

    Returns:
        The :class:`LoadReport` (also logged).

    Raises:
        PartialLoadError: before touching ``model``, if any key is missing,
            unexpected or of another shape without an allowing pattern, or
            if ``prefix_map`` sends two checkpoint keys to one model key.
        MissingWeightsError: if the file does not exist.
    """
    if isinstance(checkpoint, str):
        source = checkpoint
        state = load_state_dict_file(checkpoint, key, how_to_get)
    else:
        source, state = 'state dict', checkpoint
    if select is not None:
        state = {k: v for k, v in state.items() if _allowed(select, k)}
    try:
        _, base = convert_state_dict(
            state, prefix_rules(prefix_map), model,
            allow_missing=allow_missing, source=source)
    except ConversionError as err:
        base = err.report
    shapes = target_shapes(model)
    report = LoadReport(**vars(base), num_model_keys=len(shapes))
    report.unexpected, report.shape_mismatches = [], []
    for ckpt_key, model_key in base.unexpected:
        (report.allowed_unexpected if _allowed(
            allow_unexpected, ckpt_key, model_key) else
         report.unexpected).append((ckpt_key, model_key))
    for mismatch in base.shape_mismatches:
        (report.allowed_shape_mismatches if _allowed(
            allow_shape_mismatch, mismatch[1]) else
         report.shape_mismatches).append(mismatch)
    loadable: Dict[str, torch.Tensor] = {}
    for ckpt_key, (model_key, ) in report.mapping.items():
        if tuple(state[ckpt_key].shape) == shapes.get(model_key):
            loadable[model_key] = state[ckpt_key]
    report.loaded = sorted(loadable)
    if not report.ok:
        raise PartialLoadError(report)
    model.load_state_dict(loadable, strict=False)
    print_log(report.summary(), logger=logger)
    return report
