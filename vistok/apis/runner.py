"""Building a Runner from a config, shared by ``tools/train.py``,
``tools/test.py`` and Python users."""
import os.path as osp

import torch
from mmengine.config import Config

from vistok.utils.checkpoint import trust_pickled_checkpoints

_WRAPPER_TYPES = ('OptimWrapper', 'AmpOptimWrapper', 'AutocastOptimWrapper')


def _is_wrapper_cfg(cfg) -> bool:
    return isinstance(cfg, dict) and 'optimizer' in cfg


def enable_amp(cfg: Config) -> None:
    """Switch every optimizer wrapper of ``cfg`` to mixed precision:
    ``AmpOptimWrapper`` (fp16 + dynamic loss scale) on CUDA,
    ``AutocastOptimWrapper`` (bf16 autocast) on CPU. Handles one wrapper and
    ``OptimWrapperDict``-style configs (``dict(generator=..., ...)``)."""
    wrapper = cfg.get('optim_wrapper')
    if wrapper is None:
        raise ValueError('--amp: the config has no optim_wrapper')
    subs = [wrapper] if _is_wrapper_cfg(wrapper) else [
        v for v in wrapper.values() if _is_wrapper_cfg(v)]
    if not subs:
        raise ValueError('--amp: found no optimizer wrapper (a dict with an '
                         '`optimizer` key) in cfg.optim_wrapper')
    for sub in subs:
        current = sub.get('type', 'OptimWrapper')
        if current not in _WRAPPER_TYPES:
            raise ValueError(f'--amp: cannot switch optimizer wrapper type '
                             f'{current!r} to mixed precision')
        if torch.cuda.is_available():
            sub['type'] = 'AmpOptimWrapper'
            sub.setdefault('loss_scale', 'dynamic')
        else:
            sub['type'] = 'AutocastOptimWrapper'
            sub.pop('loss_scale', None)


def apply_cli_options(cfg: Config, *, work_dir=None, resume=None,
                      load_from=None, amp=False, launcher='none', seed=None,
                      deterministic=None, cfg_options=None) -> Config:
    """Apply the command-line options shared by the tools.

    ``resume`` is ``None`` (no resume), ``'auto'`` (newest loadable
    checkpoint of the work dir) or a checkpoint path. ``seed`` and
    ``deterministic`` set ``randomness.seed`` / ``randomness.deterministic``
    when not ``None`` and leave the config's value otherwise
    (``deterministic=None`` in the config: deterministic algorithms on
    CPU-only runs, see :meth:`vistok.engine.runner.VistokRunner.
    set_randomness`).
    """
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        name = osp.splitext(osp.basename(cfg.filename or 'config'))[0]
        cfg.work_dir = osp.join('./work_dirs', name)
    if amp:
        enable_amp(cfg)
    if load_from is not None:
        cfg.load_from = load_from
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif resume is not None:
        cfg.resume = True
        cfg.load_from = resume
    if seed is not None or deterministic is not None:
        randomness = dict(cfg.get('randomness') or {})
        if seed is not None:
            randomness['seed'] = seed
        if deterministic is not None:
            randomness['deterministic'] = bool(deterministic)
        cfg.randomness = randomness
    return cfg


def build_runner(cfg: Config, trust_checkpoint: bool = False):
    """Build the Runner a config asks for (``runner_type``), by default
    :class:`vistok.engine.runner.VistokRunner`."""
    import vistok.engine  # noqa: F401  (registers runner, loops, hooks)
    from vistok.registry import RUNNERS
    if trust_checkpoint:
        trust_pickled_checkpoints(True)
    cfg.setdefault('default_scope', 'vistok')
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    from vistok.engine.runner import VistokRunner
    return VistokRunner.from_cfg(cfg)
