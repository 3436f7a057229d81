"""vistok's Runner: mmengine's, with safe checkpoints, exact resume and CPU
distributed training.

What differs from ``mmengine.runner.Runner`` (0.10.7):

* ``setup_env`` creates the process group with :func:`vistok.utils.dist.
  init_dist` (gloo on machines without GPUs) before mmengine would.
* ``wrap_model`` builds DDP with ``device_ids=None`` on CPU (mmengine passes
  ``[LOCAL_RANK]``, which DDP rejects for CPU modules).
* ``model_wrapper_cfg=dict(type='FullyShardWrapper', ...)`` shards the
  model with FSDP (:mod:`vistok.engine.fsdp`); its weights are initialised
  before sharding, gradient clipping by norm takes the global norm over
  the shards, and checkpoints are sharded DCP directories
  (``iter_N.dcp``, :mod:`vistok.utils.dcp`), written by every rank and
  loadable on any number of ranks.
* ``save_checkpoint`` stores only safely loadable types
  (:func:`vistok.utils.checkpoint.to_safe`), adds the python / numpy / torch
  RNG states, and writes atomically. Checkpoints are loaded with
  ``weights_only=True`` (see :mod:`vistok.utils.mmengine_compat`).
* ``val`` / ``test`` of a loaded model first fill the frozen parts
  inference needs (e.g. a TiTok stage-1 teacher), which checkpoints do not
  hold (:func:`vistok.models.utils.frozen.init_inference_weights`).
* ``load_or_resume`` with ``resume=True`` and no path ("``--resume auto``")
  tries the work dir's checkpoints newest first and falls back past any that
  cannot be loaded; it never starts from scratch over existing checkpoints.
* ``randomness.deterministic`` has a third value, ``None`` (the default
  runtime's): PyTorch's deterministic algorithms on CPU-only runs, off
  with CUDA; ``True`` / ``False`` force them on / off for the run
  (:meth:`VistokRunner.set_randomness`).
* ``auto_scale_lr`` takes a ``rule``: ``'linear'`` (mmengine's) or
  ``'sqrt'`` (SeiT++'s fine-tuning rule), and the effective batch counts
  gradient accumulation (:mod:`vistok.engine.optimizers.lr_scaling`); the
  config is checked when the Runner is built.

The RNG states restored on resume are rank 0's; with the default
``randomness.diff_rank_seed=False`` all ranks share that stream.
"""
import os
import os.path as osp
import re
import time

import mmengine
import torch
from mmengine.device import get_device
from mmengine.dist import get_rank, is_distributed
from mmengine.fileio import get_file_backend, join_path
from mmengine.logging import MessageHub
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper, OptimWrapperDict
from mmengine.runner import Runner
from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu
from mmengine.utils import apply_to

import vistok
from vistok.engine.fsdp import FullyShardWrapper
from vistok.engine.optimizers.lr_scaling import (
    check_auto_scale_lr,
    effective_batch_size,
    lr_scale_factor,
)
from vistok.engine.sharded_state import (
    load_optimizer_state_by_name,
    split_optimizer_state,
)
from vistok.models.utils.frozen import init_inference_weights
from vistok.registry import MODEL_WRAPPERS, RUNNERS
from vistok.utils.checkpoint import (
    CheckpointLoadError,
    save_checkpoint_atomic,
    to_safe,
)
from vistok.utils.dcp import (
    SUFFIX,
    check_complete,
    is_sharded_checkpoint,
    load_sharded,
    save_sharded,
    sharded_keys,
    split_tensors,
)
from vistok.utils.dist import clip_grad_norm_, init_dist
from vistok.utils.rng import get_rng_state

_CKPT_NUMBER = re.compile(r'(?:iter|epoch)_(\d+)\.(?:pth|dcp)$')


def _unbuilt(schedulers) -> bool:
    """Whether a ``param_scheduler`` config (a dict / list of configs, or
    a dict of them per optimizer) holds no built scheduler yet."""
    if isinstance(schedulers, dict):
        return 'type' in schedulers or all(
            _unbuilt(s) for s in schedulers.values())
    if isinstance(schedulers, (list, tuple)):
        return all(_unbuilt(s) for s in schedulers)
    return False


def candidate_checkpoints(work_dir):
    """Checkpoints of ``work_dir`` to resume from, newest first: the one named
    in ``last_checkpoint``, then ``iter_N.pth`` / ``epoch_N.pth`` (or the
    sharded ``.dcp`` directories) by decreasing ``N``; unfinished
    ``.partial`` directories are never candidates."""
    found = []
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            last = f.read().strip()
        if last:
            found.append(last)
    if osp.isdir(work_dir):
        numbered = []
        for name in os.listdir(work_dir):
            match = _CKPT_NUMBER.match(name)
            if match:
                numbered.append(
                    (int(match.group(1)), osp.join(work_dir, name)))
        for _, path in sorted(numbered, reverse=True):
            if all(not osp.samefile(path, p) for p in found if osp.exists(p)):
                found.append(path)
    return found


@RUNNERS.register_module()
class VistokRunner(Runner):
    """mmengine ``Runner`` with vistok's checkpoint, resume and distributed
    fixes (see the module docstring). Built by ``tools/train.py``; a config
    may also select it with ``runner_type='VistokRunner'``."""

    resumed_rng_state = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_auto_scale_lr(self.auto_scale_lr)

    def set_randomness(self, seed, diff_rank_seed: bool = False,
                       deterministic=None) -> None:
        """Seed every RNG (mmengine's) and choose PyTorch's deterministic
        algorithms for this run.

        Args:
            seed: the seed (``None``: drawn and synchronised over ranks).
            diff_rank_seed: add the rank to the seed on each process.
            deterministic: ``True``: ``torch.use_deterministic_algorithms(
                True)`` and, with CUDA, cuDNN's deterministic choices;
                ``False``: PyTorch's default (fastest) algorithms; ``None``
                (``configs/_base_/default_runtime.py``): ``True`` when the
                run has no GPU, ``False`` otherwise.

        On CPU the op behind the drift of the demo config is ``index_put_``
        with ``accumulate=True`` — the backward of ``codebook[indices]``, i.e.
        of every codebook look-up — which adds rows with parallel atomic
        float adds when more than one thread runs and more than one
        parallel grain (32,768 elements) is added: the order, hence the
        rounding, changes from run to run (the demo's weights differ by
        ~1e-4 after 15 steps, ~6e-3 after 30). Deterministic, it adds
        serially; ``bench/determinism.py`` measures the cost (README,
        "Reproducibility"). The mode also makes ``put_(accumulate=True)``
        and ``index_copy_`` deterministic on CPU and makes ``put_(
        accumulate=False)`` and ``MaxUnpool`` raise (PyTorch's
        ``use_deterministic_algorithms``; vistok uses neither). The flag is
        global to the process and set explicitly either way, so a run does
        not inherit an earlier runner's choice.
        """
        if deterministic is None:
            deterministic = get_device() == 'cpu'
        elif not isinstance(deterministic, bool):
            raise TypeError(f'randomness.deterministic must be True, False '
                            f'or None (deterministic on CPU), got '
                            f'{deterministic!r}')
        super().set_randomness(seed, diff_rank_seed=diff_rank_seed,
                               deterministic=deterministic)
        torch.use_deterministic_algorithms(deterministic)

    def scale_lr(self, optim_wrapper, auto_scale_lr=None) -> None:
        """Scale every parameter group's learning rate by the
        ``auto_scale_lr`` rule (``'linear'`` or ``'sqrt'``, see
        :mod:`vistok.engine.optimizers.lr_scaling`) at the effective batch
        world size × per-GPU batch × the wrapper's ``accumulative_counts``
        (each wrapper of an ``OptimWrapperDict`` with its own). The base lr
        mmengine tracks for logging (``base_param_settings``, present with
        several groups) is scaled too. Called by ``train()`` after the
        optimizers and before the schedulers are built."""
        if auto_scale_lr is None or not auto_scale_lr.get('enable', False):
            return
        if self.param_schedulers is not None and not _unbuilt(
                self.param_schedulers):
            raise RuntimeError('scale_lr must run before the parameter '
                               'schedulers are built (they store the '
                               'initial lr)')
        loader = self._train_dataloader
        batch_size = (loader['batch_size'] if isinstance(loader, dict) else
                      loader.batch_size)
        wrappers = (dict(optim_wrapper.items()) if isinstance(
            optim_wrapper, OptimWrapperDict) else dict(optim=optim_wrapper))
        for name, wrapper in wrappers.items():
            # mmengine keeps the count private (OptimWrapper.__init__)
            counts = getattr(wrapper, '_accumulative_counts', 1)
            real = effective_batch_size(self.world_size, batch_size, counts)
            factor = lr_scale_factor(auto_scale_lr, real)
            self.logger.info(
                f'auto_scale_lr ({auto_scale_lr.get("rule", "linear")}): '
                f'{name} lr x {factor:.6g} for an effective batch of {real} '
                f'({self.world_size} x {batch_size} x {counts}) against '
                f'{auto_scale_lr["base_batch_size"]}')
            for group in wrapper.optimizer.param_groups:
                group['lr'] = group['lr'] * factor
            if getattr(wrapper, 'base_param_settings', None) is not None:
                wrapper.base_param_settings['lr'] *= factor

    def setup_env(self, env_cfg):
        if self.distributed and not is_distributed():
            init_dist(self.launcher, **env_cfg.get('dist_cfg', {}))
        super().setup_env(env_cfg)
        # mmengine names the run's logger, message hub and visualizer (global
        # instances) and its log dir after a one-second timestamp: a second
        # Runner started within the same second in this process would reuse
        # the first one's and write into its work dir. Make it unique.
        base, number = self._timestamp, 0
        while any(name.endswith(self._timestamp)
                  for name in MessageHub._instance_dict):
            number += 1
            self._timestamp = f'{base}_{number}'

    @property
    def sharded(self) -> bool:
        """Whether the model is sharded with FSDP (checkpoints are then
        sharded directories)."""
        return isinstance(self.model, FullyShardWrapper)

    def checkpoint_filename(self, filename: str) -> str:
        """The name a checkpoint called ``filename`` (``iter_N.pth``) is
        saved under: ``iter_N.dcp`` for a sharded model."""
        if self.sharded:
            return osp.splitext(filename)[0] + SUFFIX
        return filename

    def wrap_model(self, model_wrapper_cfg, model):
        if (model_wrapper_cfg or {}).get('type') == 'FullyShardWrapper':
            if not self.distributed:
                self.logger.info('model_wrapper_cfg asks for FSDP, but this '
                                 'is a single process: training unwrapped.')
                return model.to(get_device())
            return MODEL_WRAPPERS.build(
                model_wrapper_cfg,
                default_args=dict(module=model.to(get_device())))
        if (self.distributed and not is_model_wrapper(model)
                and getattr(model, 'syncs_gradients', False)):
            cfg = dict(type='GradientSyncWrapper')
            cfg.update(model_wrapper_cfg or {})
            return MODEL_WRAPPERS.build(
                cfg, default_args=dict(module=model.to(get_device())))
        if (not self.distributed or torch.cuda.is_available()
                or is_model_wrapper(model)):
            return super().wrap_model(model_wrapper_cfg, model)
        cfg = dict(
            type='MMDistributedDataParallel',
            broadcast_buffers=False,
            find_unused_parameters=self.cfg.get('find_unused_parameters',
                                                False))
        cfg.update(model_wrapper_cfg or {})
        return MODEL_WRAPPERS.build(
            cfg, default_args=dict(module=model.to(get_device()),
                                   device_ids=None))

    def _init_model_weights(self) -> None:
        """mmengine's initialisation; an FSDP model is initialised whole,
        then sharded here, and the optimizers (already built) are given
        its shards (:meth:`~vistok.engine.fsdp.FullyShardWrapper.shard`).
        mmengine would broadcast rank 0's *shards* over the others'."""
        if not self.sharded:
            super()._init_model_weights()
            return
        optimizers = []
        if isinstance(self.optim_wrapper, OptimWrapper):
            optimizers = [wrapper.optimizer for _, wrapper in
                          self._optim_wrappers(self.optim_wrapper)]
        self.model.shard(init_weights=True, optimizers=optimizers)

    def build_optim_wrapper(self, optim_wrapper):
        """mmengine's; for an FSDP model, gradient clipping by norm uses
        the global norm over the shards and replicated parameters
        (:func:`vistok.utils.dist.clip_grad_norm_`), and fp16 loss scaling
        (``AmpOptimWrapper``) is refused: FSDP's mixed precision is its
        ``param_dtype`` (or ``AutocastOptimWrapper``'s bf16)."""
        built = super().build_optim_wrapper(optim_wrapper)
        if self.sharded:
            for name, wrapper in self._optim_wrappers(built):
                if type(wrapper).__name__ == 'AmpOptimWrapper':
                    raise ValueError(
                        f'optim_wrapper {name or ""}: AmpOptimWrapper\'s '
                        'fp16 loss scaling is not supported with FSDP; use '
                        "model_wrapper_cfg.param_dtype='bfloat16' or "
                        'AutocastOptimWrapper')
                if getattr(wrapper, 'clip_func', None) is \
                        torch.nn.utils.clip_grad_norm_:
                    wrapper.clip_func = clip_grad_norm_
        return built

    @staticmethod
    def _optim_wrappers(optim_wrapper):
        """``(name, wrapper)`` pairs of a built wrapper or wrapper dict
        (name ``''`` for a single wrapper)."""
        if isinstance(optim_wrapper, OptimWrapperDict):
            return list(optim_wrapper.items())
        return [('', optim_wrapper)]

    def val(self) -> dict:
        """Validate a loaded model (see :meth:`test`)."""
        init_inference_weights(self.model)
        return super().val()

    def test(self) -> dict:
        """Test a loaded model: the frozen parts inference needs (not in
        checkpoints) are filled from their files first
        (:func:`vistok.models.utils.frozen.init_inference_weights`)."""
        init_inference_weights(self.model)
        return super().test()

    def save_checkpoint(self, out_dir, filename, file_client_args=None,
                        save_optimizer=True, save_param_scheduler=True,
                        meta=None, by_epoch=True, backend_args=None):
        """Save model, optimizer, schedulers, message hub and RNG states.

        Same arguments as mmengine's; ``file_client_args`` is not supported
        (use ``backend_args``). Local paths are written atomically. Every
        rank calls it (as mmengine's ``CheckpointHook`` does); rank 0
        writes the file, or, for an FSDP model, every rank writes its
        shards into the directory ``filename`` (named by
        :meth:`checkpoint_filename`; local paths only).
        """
        if not self.sharded and get_rank() != 0:
            return
        if file_client_args is not None:
            raise ValueError('file_client_args is deprecated in mmengine and '
                             'not supported by vistok: use backend_args')
        meta = dict(meta or {})
        if by_epoch:
            meta.setdefault('epoch', self.epoch + 1)
            meta.setdefault('iter', self.iter)
        else:
            meta.setdefault('epoch', self.epoch)
            meta.setdefault('iter', self.iter + 1)
        meta.update(
            cfg=self.cfg.pretty_text,
            seed=self.seed,
            experiment_name=self.experiment_name,
            time=time.strftime('%Y%m%d_%H%M%S', time.localtime()),
            mmengine_version=mmengine.__version__,
            vistok_version=vistok.__version__)
        dataset = self.train_dataloader.dataset
        if hasattr(dataset, 'metainfo'):
            meta.update(dataset_meta=dataset.metainfo)

        model = self.model.module if is_model_wrapper(self.model) \
            else self.model
        to_cpu = (lambda x: hasattr(x, 'cpu'), lambda x: x.cpu())
        checkpoint = dict(
            meta=meta,
            state_dict=(model.state_dict() if self.sharded else
                        weights_to_cpu(model.state_dict())),
            message_hub=apply_to(self.message_hub.state_dict(), *to_cpu),
            rng_state=get_rng_state())
        if save_optimizer and self.sharded:
            checkpoint['optimizer'] = {
                name: split_optimizer_state(model, wrapper.optimizer,
                                            f'optimizer.{name}')
                for name, wrapper in self._optim_wrappers(self.optim_wrapper)
            }
        elif save_optimizer:
            if not isinstance(self.optim_wrapper, OptimWrapper):
                raise TypeError('self.optim_wrapper should be an OptimWrapper '
                                'or OptimWrapperDict, but got '
                                f'{self.optim_wrapper}')
            checkpoint['optimizer'] = apply_to(self.optim_wrapper.state_dict(),
                                               *to_cpu)
        if save_param_scheduler and self.param_schedulers is not None:
            if isinstance(self.param_schedulers, dict):
                checkpoint['param_schedulers'] = {
                    name: [s.state_dict() for s in schedulers]
                    for name, schedulers in self.param_schedulers.items()}
            else:
                checkpoint['param_schedulers'] = [
                    s.state_dict() for s in self.param_schedulers]

        self.call_hook('before_save_checkpoint', checkpoint=checkpoint)
        filepath = join_path(out_dir, filename, backend_args=backend_args)
        backend = get_file_backend(filepath, backend_args=backend_args)
        if self.sharded:
            if type(backend).__name__ != 'LocalBackend':
                raise ValueError('sharded (FSDP) checkpoints are written to '
                                 f'local or mounted paths only, not '
                                 f'{filepath}')
            self._save_sharded(filepath, checkpoint)
        elif type(backend).__name__ == 'LocalBackend':
            save_checkpoint_atomic(checkpoint, filepath)
        else:  # remote storage: no rename, but still safely loadable
            save_checkpoint(to_safe(checkpoint), filepath,
                            backend_args=backend_args)

    def _save_sharded(self, path, checkpoint: dict) -> None:
        """Write ``checkpoint`` as the sharded directory ``path``: the
        model's and optimizers' tensors with DCP, the rest safely
        (:func:`vistok.utils.dcp.save_sharded`)."""
        tensors = {f'model.{k}': v
                   for k, v in checkpoint.pop('state_dict').items()}
        optimizers = checkpoint.pop('optimizer', None)
        if optimizers is not None:
            checkpoint['optimizer'] = {}
            for name, (skeleton, flat) in optimizers.items():
                checkpoint['optimizer'][name] = skeleton
                tensors.update(flat)
        save_sharded(path, tensors, checkpoint)

    def load_checkpoint(self, filename, map_location='cpu', strict=False,
                        revise_keys=[(r'^module.', '')]):
        """mmengine's, and sharded checkpoint directories (written by an
        FSDP run with any number of ranks) into a sharded or unsharded
        model."""
        if is_sharded_checkpoint(filename):
            checkpoint = self._load_sharded(str(filename), strict)
        else:
            checkpoint = super().load_checkpoint(filename, map_location,
                                                 strict, revise_keys)
        self.resumed_rng_state = checkpoint.get('rng_state')
        return checkpoint

    def _load_sharded(self, path: str, strict: bool) -> dict:
        """Load the sharded checkpoint ``path`` into the model (and, when
        resuming, into the optimizers); returns its non-tensor part for
        mmengine's ``resume``."""
        checkpoint = check_complete(path)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) \
            else self.model
        state = model.state_dict()
        saved = {k[len('model.'):] for k in sharded_keys(path, 'model.')}
        missing = sorted(set(state) - saved)
        unexpected = sorted(saved - set(state))
        if strict and (missing or unexpected):
            raise CheckpointLoadError(
                f'{path} does not match the model: missing {missing[:5]}, '
                f'unexpected {unexpected[:5]}')
        if missing or unexpected:
            self.logger.warning(f'{path}: keys missing in the checkpoint '
                                f'{missing}; unexpected {unexpected}')
        _, targets = split_tensors(
            {k: v for k, v in state.items() if k in saved}, 'model')
        load_sharded(path, targets)
        model.load_state_dict({k[len('model.'):]: v
                               for k, v in targets.items()}, strict=False)
        optimizers = checkpoint.pop('optimizer', None)
        if self._resuming_optimizer and optimizers is not None:
            for name, wrapper in self._optim_wrappers(self.optim_wrapper):
                if name not in optimizers:
                    raise CheckpointLoadError(
                        f'{path} has no state for optimizer {name!r} '
                        f'(it has {sorted(optimizers)})')
                load_optimizer_state_by_name(model, wrapper.optimizer,
                                             optimizers[name], path,
                                             f'optimizer.{name}')
        self._has_loaded = True
        self.logger.info(f'Load sharded checkpoint from {path}')
        return checkpoint

    _resuming_optimizer = False

    def resume(self, filename, resume_optimizer=True,
               resume_param_scheduler=True, map_location='default'):
        """mmengine's; a sharded checkpoint's optimizer states are loaded
        with the model by :meth:`load_checkpoint`, re-sharded to this
        run."""
        self._resuming_optimizer = resume_optimizer
        if resume_optimizer and is_sharded_checkpoint(filename):
            self.optim_wrapper = self.build_optim_wrapper(self.optim_wrapper)
        try:
            super().resume(filename, resume_optimizer,
                           resume_param_scheduler, map_location)
        finally:
            self._resuming_optimizer = False

    def load_or_resume(self):
        if self._has_loaded or not (self._resume and self._load_from is None):
            return super().load_or_resume()
        candidates = candidate_checkpoints(self.work_dir)
        if not candidates:
            self.logger.info(f'--resume auto: no checkpoint in '
                             f'{self.work_dir}, starting from scratch.')
            return
        failures = []
        for path in candidates:
            try:
                self.resume(path)
            except CheckpointLoadError as err:
                failures.append(str(err))
                self.logger.warning(f'--resume auto: skipping {path}: {err}')
                continue
            if failures:
                self.logger.warning(f'--resume auto: resumed from {path}, '
                                    f'the newest checkpoint that loads.')
            self.logger.info(f'Auto-resumed from {path}.')
            self._has_loaded = True
            return
        raise CheckpointLoadError(
            f'--resume auto: none of the checkpoints in {self.work_dir} can '
            'be loaded (refusing to start from scratch over them):\n  '
            + '\n  '.join(failures))
