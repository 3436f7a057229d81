"""Learning-rate scaling with the batch size: the rules of the Runner's
``auto_scale_lr`` config.

``auto_scale_lr = dict(base_batch_size=B0, rule='linear' | 'sqrt',
enable=True)`` multiplies every parameter group's learning rate by

* ``'linear'`` (default; Goyal et al. 2017, mmengine's only rule):
  ``B / B0``;
* ``'sqrt'`` (Krizhevsky 2014, "One weird trick"; SeiT++ fine-tuning,
  ``main_mtm_finetune.py``: ``lr = blr · √(eff_batch_size) / 8``):
  ``√(B / B0)``. With ``B0 = 64`` and the config's ``lr`` set to ``blr``
  this is SeiT++'s ``blr · √B / 8``.

``B`` is the effective batch of one optimizer step: world size × per-GPU
batch × ``accumulative_counts`` (MAE's and SeiT++'s ``eff_batch_size``).
mmengine's own ``Runner.scale_lr`` leaves the accumulation out
(open-mmlab/mmengine PR #1080, unmerged); vistok counts it for both rules,
so SeiT++'s pre-training rule ``blr · eff_bs / 256`` is
``rule='linear', base_batch_size=256``.
"""
import math
from typing import Optional

#: the rules of ``auto_scale_lr.rule``
LR_SCALING_RULES = ('linear', 'sqrt')
AUTO_SCALE_LR_KEYS = ('enable', 'base_batch_size', 'rule')


def check_auto_scale_lr(cfg: Optional[dict]) -> None:
    """Refuse an ``auto_scale_lr`` config with an unknown key or rule, or,
    when enabled, without a positive ``base_batch_size``; the error names
    the key."""
    if cfg is None:
        return
    if not isinstance(cfg, dict):
        raise TypeError(f'auto_scale_lr must be a dict, got '
                        f'{type(cfg).__name__}')
    unknown = sorted(set(cfg) - set(AUTO_SCALE_LR_KEYS))
    if unknown:
        raise KeyError(f'auto_scale_lr: unknown keys {unknown}; known: '
                       f'{list(AUTO_SCALE_LR_KEYS)}')
    rule = cfg.get('rule', 'linear')
    if rule not in LR_SCALING_RULES:
        raise ValueError(f'auto_scale_lr.rule must be one of '
                         f'{LR_SCALING_RULES}, got {rule!r}')
    if cfg.get('enable', False):
        base = cfg.get('base_batch_size')
        if isinstance(base, bool) or not isinstance(base, int) or base <= 0:
            raise ValueError(f'auto_scale_lr.base_batch_size must be a '
                             f'positive int, got {base!r}')


def effective_batch_size(world_size: int, batch_size: int,
                         accumulative_counts: int = 1) -> int:
    """Samples per optimizer step: ``world_size · batch_size ·
    accumulative_counts``."""
    for name, value in (('world_size', world_size),
                        ('batch_size', batch_size),
                        ('accumulative_counts', accumulative_counts)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f'{name} must be a positive int, got {value!r}')
    return world_size * batch_size * accumulative_counts


def lr_scale_factor(cfg: dict, batch_size: int) -> float:
    """The factor ``auto_scale_lr`` (``cfg``) applies to the learning rates
    at effective batch ``batch_size`` (module docstring)."""
    check_auto_scale_lr(dict(cfg, enable=True))
    ratio = batch_size / cfg['base_batch_size']
    return math.sqrt(ratio) if cfg.get('rule', 'linear') == 'sqrt' else ratio
