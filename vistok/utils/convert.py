"""Convert official checkpoints to vistok's parameter names.

A converter is a list of rules, each ``(pattern, replacement)`` or
``(pattern, replacement, transform)`` (or a :class:`Rule`): an official key
that ``re.fullmatch``-es ``pattern`` becomes ``match.expand(replacement)``
(a tuple of replacements copies the tensor to several keys, e.g. the model
and its EMA copy), and ``transform`` (a reshape, a transpose, ...) is applied
to the tensor; a transform returning a tuple of ``n`` tensors splits it
(e.g. a fused q/k/v projection): target ``i`` gets tensor ``i mod n``. The
first matching rule wins.

:func:`convert_state_dict` refuses silent partial loads: it raises
:class:`ConversionError` with a :class:`ConversionReport` unless

* every official key is mapped by a rule or matches an ``ignore_unmapped``
  pattern (e.g. taming's ``loss.perceptual_loss.*``: vistok loads LPIPS from
  its own files),
* every target key is produced or matches an ``allow_missing`` pattern
  (e.g. LeCam statistics that the official code does not keep),
* no two official keys produce the same target key (the mapping is a
  bijection onto the produced keys), no produced key is unknown to the
  target, and every shape matches.

:func:`load_official_state_dict`, :func:`convert_for_model` and
:func:`save_state_dict` are the file half. The command line shared by the
scripts in ``tools/model_converters/`` is :mod:`vistok.apis.convert`; the
rules of each official layout are in :mod:`vistok.apis.converters`.
"""
import os
import os.path as osp
import re
import tempfile
from dataclasses import dataclass, field
from typing import (
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import torch
import torch.nn as nn

from vistok.utils.checkpoint import (
    CheckpointLoadError,
    load_checkpoint_file,
    load_safetensors_file,
    pickle_trusted,
    save_checkpoint_atomic,
    trust_pickled_checkpoints,
)

Shape = Tuple[int, ...]
#: a tensor -> the converted tensor, or a tuple of tensors (a split)
Transform = Callable[[torch.Tensor], Union[torch.Tensor, Tuple[torch.Tensor,
                                                               ...]]]


@dataclass(frozen=True)
class Rule:
    """Official keys matching ``pattern`` (``re.fullmatch``) become
    ``match.expand(t)`` for every ``t`` in ``targets``, with ``transform``
    applied to the tensor. A single target may be given as a string.

    A ``transform`` returning a tuple of ``n`` tensors (each with its own
    storage) splits the official tensor: target ``i`` gets tensor
    ``i mod n``, so the number of targets must be a multiple of ``n`` and
    :func:`with_copies` repeats the split for the copies."""
    pattern: str
    targets: Union[str, Tuple[str, ...]]
    transform: Optional[Transform] = None

    def __post_init__(self):
        if isinstance(self.targets, str):
            object.__setattr__(self, 'targets', (self.targets, ))
        else:
            object.__setattr__(self, 'targets', tuple(self.targets))

    def apply(self, key: str) -> Optional[Tuple[str, ...]]:
        """The target keys of ``key``, or ``None`` if the rule does not
        match it."""
        match = re.fullmatch(self.pattern, key)
        if match is None:
            return None
        return tuple(match.expand(t) for t in self.targets)


RuleLike = Union[Rule, Tuple]


def as_rule(rule: RuleLike) -> Rule:
    """A :class:`Rule` from a ``Rule`` or a ``(pattern, replacement[,
    transform])`` tuple."""
    if isinstance(rule, Rule):
        return rule
    if not isinstance(rule, tuple) or len(rule) not in (2, 3):
        raise TypeError(f'a rule is a Rule or a (pattern, replacement[, '
                        f'transform]) tuple, got {rule!r}')
    return Rule(*rule)


def with_copies(rules: Iterable[RuleLike], prefix: str) -> List[Rule]:
    """``rules`` writing every tensor also to ``prefix + key`` (e.g.
    ``'ema.'``: the EMA copy of an AutoencoderTokenizer's generator)."""
    return [
        Rule(rule.pattern,
             rule.targets + tuple(prefix + t for t in rule.targets),
             rule.transform) for rule in map(as_rule, rules)
    ]


#: patterns of vistok tokenizer state that no released tokenizer holds (the
#: discriminator, the LeCam statistics, the EMA's update count): converters
#: allow them to keep their initial values
TOKENIZER_TRAINING_STATE = (r'discriminator\..+',
                            r'adversarial_loss\.lecam_ema_(real|fake)',
                            r'ema\.num_updates')


def rules_with_ema_copy(rules: Iterable[RuleLike],
                        model: nn.Module) -> List[Rule]:
    """``rules``, also writing to the EMA copy of ``model`` (``ema.<key>``)
    when it keeps one."""
    if getattr(model, 'ema', None) is not None:
        return with_copies(rules, 'ema.')
    return [as_rule(rule) for rule in rules]


def rules_with_ema_copies(parts: Mapping[str, Iterable[RuleLike]],
                          model: nn.Module) -> List[Rule]:
    """The rules of every part (name → rules); the rules of a part the
    model's EMA copy (``model.ema``) keeps also write to ``ema.<key>``."""
    ema = getattr(model, 'ema', None)
    rules: List[Rule] = []
    for part, part_rules in parts.items():
        rules += (with_copies(part_rules, 'ema.')
                  if ema is not None and part in ema else
                  [as_rule(rule) for rule in part_rules])
    return rules


def _first_match(rules: Sequence[Rule], key: str):
    """``(rule, target keys)`` of the first rule matching ``key``, else
    ``(None, None)``."""
    for rule in rules:
        targets = rule.apply(key)
        if targets is not None:
            return rule, targets
    return None, None


def _matches_any(key: str, patterns: Sequence[str]) -> bool:
    return any(re.fullmatch(p, key) for p in patterns)


def format_key_list(title: str, items: Sequence, limit: int) -> str:
    """``title (n):`` then one indented line per item, at most ``limit``."""
    lines = [f'  {title} ({len(items)}):']
    lines += [f'    {item}' for item in items[:limit]]
    if len(items) > limit:
        lines.append(f'    ... and {len(items) - limit} more')
    return '\n'.join(lines)


@dataclass
class ConversionReport:
    """What a conversion did with every official and target key.

    Attributes:
        source: name of the official state dict (a file path) for messages.
        mapping: official key -> the target keys it was written to.
        ignored: official keys dropped by an ``ignore_unmapped`` pattern.
        unmapped: official keys no rule maps and no pattern ignores.
        unexpected: ``(official key, produced key)`` where the target has
            no such key.
        duplicates: target key -> the official keys that all produced it.
        shape_mismatches: ``(official key, target key, official shape after
            the transform, target shape)``.
        missing: target keys nothing produced and no pattern allows.
        allowed_missing: target keys nothing produced, allowed by an
            ``allow_missing`` pattern (they keep the model's values).
    """
    source: str
    mapping: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    ignored: List[str] = field(default_factory=list)
    unmapped: List[str] = field(default_factory=list)
    unexpected: List[Tuple[str, str]] = field(default_factory=list)
    duplicates: Dict[str, List[str]] = field(default_factory=dict)
    shape_mismatches: List[Tuple[str, str, Shape, Shape]] = field(
        default_factory=list)
    missing: List[str] = field(default_factory=list)
    allowed_missing: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No unmapped, unexpected, duplicate, mismatched or missing key."""
        return not (self.unmapped or self.unexpected or self.duplicates
                    or self.shape_mismatches or self.missing)

    def summary(self, limit: int = 20) -> str:
        """Counts, then the problems (at most ``limit`` keys per list)."""
        produced = sum(len(t) for t in self.mapping.values())
        lines = [f'{self.source}: {len(self.mapping)} official tensors '
                 f'mapped to {produced} target keys, {len(self.ignored)} '
                 f'ignored, {len(self.allowed_missing)} target keys allowed '
                 f'to keep their initial values']
        if self.unmapped:
            lines.append(format_key_list(
                'official keys no rule maps (add a rule, or an '
                'ignore_unmapped pattern if they are not needed)',
                self.unmapped, limit))
        if self.missing:
            lines.append(format_key_list(
                'target keys nothing provides (add a rule, or an '
                'allow_missing pattern if they may keep their initial '
                'values)', self.missing, limit))
        if self.unexpected:
            lines.append(format_key_list(
                'mapped to keys the target does not have',
                [f'{o} -> {t}' for o, t in self.unexpected], limit))
        if self.duplicates:
            lines.append(format_key_list(
                'target keys produced by several official keys',
                [f'{t} <- {", ".join(o)}'
                 for t, o in self.duplicates.items()], limit))
        if self.shape_mismatches:
            lines.append(format_key_list(
                'shape mismatches (official -> target)',
                [f'{o} {tuple(so)} -> {t} {tuple(st)}'
                 for o, t, so, st in self.shape_mismatches], limit))
        return '\n'.join(lines)


class ConversionError(ValueError):
    """A conversion would load only part of a model; ``report`` says what
    is wrong."""

    def __init__(self, report: ConversionReport):
        self.report = report
        super().__init__('refusing a partial conversion of '
                         f'{report.summary()}')


def target_shapes(target: Union[nn.Module, Mapping]) -> Dict[str, Shape]:
    """Key -> shape of a model's state dict (a ``meta``-device model
    works), or of a mapping of keys to tensors / shapes."""
    if isinstance(target, nn.Module):
        target = target.state_dict()
    return {
        key: tuple(value.shape) if isinstance(value, torch.Tensor) else
        tuple(value)
        for key, value in target.items()
    }


def convert_state_dict(
        official: Mapping[str, torch.Tensor],
        rules: Iterable[RuleLike],
        target: Union[nn.Module, Mapping],
        *,
        allow_missing: Sequence[str] = (),
        ignore_unmapped: Sequence[str] = (),
        source: str = 'official state dict'
) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """Rename (and transform) ``official``'s tensors into ``target``'s keys.

    Args:
        official: the official state dict.
        rules: see the module docstring; the first matching rule wins.
        target: the vistok model (or its keys with tensors / shapes).
        allow_missing: regexes (``re.fullmatch``) of target keys that may
            be absent from the result.
        ignore_unmapped: regexes of official keys that no rule needs to
            map; they are dropped.
        source: name of ``official`` in messages.

    Returns:
        ``(converted, report)``; ``converted`` lacks the allowed missing
        keys. A tensor copied to several keys is cloned, so the result can
        be saved as safetensors.

    Raises:
        ConversionError: with the report, unless ``report.ok``.
    """
    rules = [as_rule(r) for r in rules]
    shapes = target_shapes(target)
    report = ConversionReport(source=source)
    converted: Dict[str, torch.Tensor] = {}
    producers: Dict[str, List[str]] = {}
    for key, tensor in official.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f'{source}: entry {key!r} is a '
                            f'{type(tensor).__name__}, not a tensor')
        rule, targets = _first_match(rules, key)
        if rule is None:
            (report.ignored if _matches_any(key, ignore_unmapped) else
             report.unmapped).append(key)
            continue
        value = rule.transform(tensor) if rule.transform else tensor
        values = tuple(value) if isinstance(value, (tuple, list)) else (
            value, )
        if not values or len(targets) % len(values):
            raise ValueError(
                f'{source}: the rule for {rule.pattern!r} splits {key!r} '
                f'into {len(values)} tensors, which does not divide its '
                f'{len(targets)} targets {list(targets)}')
        report.mapping[key] = targets
        for i, new_key in enumerate(targets):
            value = values[i % len(values)]
            producers.setdefault(new_key, []).append(key)
            if new_key not in shapes:
                report.unexpected.append((key, new_key))
                continue
            if tuple(value.shape) != shapes[new_key]:
                report.shape_mismatches.append(
                    (key, new_key, tuple(value.shape), shapes[new_key]))
            converted[new_key] = value.clone() if i >= len(values) else value
    report.duplicates = {k: v for k, v in producers.items() if len(v) > 1}
    for key in shapes:
        if key not in producers:
            (report.allowed_missing if _matches_any(key, allow_missing) else
             report.missing).append(key)
    if not report.ok:
        raise ConversionError(report)
    return converted, report


# --- files ------------------------------------------------------------------
def load_torch_checkpoint(path: str, trust: bool = False):
    """Whatever the torch file ``path`` holds, on the CPU: loaded safely
    (:func:`vistok.utils.checkpoint.load_checkpoint_file`), or with a full
    pickle for this load only when ``trust`` (official training
    checkpoints may hold non-tensor objects; a full pickle can run code
    from the file)."""
    enable = trust and not pickle_trusted()
    if enable:
        trust_pickled_checkpoints(True)
    try:
        return load_checkpoint_file(path, map_location='cpu')
    finally:
        if enable:
            trust_pickled_checkpoints(False)


def load_official_state_dict(path: str,
                             trust: bool = False) -> Dict[str, torch.Tensor]:
    """The state dict of an official checkpoint: a ``.safetensors`` file, or
    a torch file holding the state dict, a dict with it under
    ``'state_dict'`` (PyTorch Lightning) or ``'model'``, or a pickled
    ``nn.Module`` (e.g. SeiT's ``tokenizer.ckpt``; only loadable with
    ``trust``), whose ``state_dict()`` is taken.

    Torch files load safely
    (:func:`vistok.utils.checkpoint.load_checkpoint_file`); ``trust=True``
    allows a full pickle for this load only (Lightning checkpoints hold
    non-tensor objects; a full pickle can run code from the file)."""
    if path.endswith('.safetensors'):
        return load_safetensors_file(path)
    loaded = load_torch_checkpoint(path, trust)
    if isinstance(loaded, nn.Module):
        loaded = loaded.state_dict()
    for wrapper in ('state_dict', 'model'):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not loaded:
        raise CheckpointLoadError(
            f'checkpoint {path} holds no state dict (expected a dict of '
            f'tensors, or one under "state_dict" or "model")')
    return loaded


def convert_for_model(official: Mapping[str, torch.Tensor],
                      model: nn.Module,
                      rules: Iterable[RuleLike],
                      *,
                      allow_missing: Sequence[str] = (),
                      ignore_unmapped: Sequence[str] = (),
                      source: str = 'official state dict'
                      ) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """:func:`convert_state_dict` into ``model``, completed with the model's
    current values of the allowed missing keys and loaded into ``model``
    with ``strict=True`` (so the result is known to load). Returns
    ``(state_dict, report)``."""
    converted, report = convert_state_dict(
        official, rules, model, allow_missing=allow_missing,
        ignore_unmapped=ignore_unmapped, source=source)
    initial = model.state_dict()
    for key in report.allowed_missing:
        converted[key] = initial[key].detach().clone()
    model.load_state_dict(converted, strict=True)
    return converted, report


def save_state_dict(state: Mapping[str, torch.Tensor], path: str) -> None:
    """Write ``state`` atomically: ``.safetensors``, or otherwise a torch
    file ``{'state_dict': state}`` that safe loading reads."""
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    if not path.endswith('.safetensors'):
        save_checkpoint_atomic({'state_dict': tensors}, path)
        return
    from safetensors.torch import save_file
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.',
                               dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
