"""Per-rank training memory of a config under DDP or FSDP, from a build on
the ``meta`` device (no weights, no data, seconds for a 2B model); used by
``tools/analysis/estimate_memory.py``.

What each column counts, per rank (bytes):

* **params**: trainable parameters (not the EMA copy).
* **grads**: one gradient per trainable parameter, in its dtype.
* **optimizer**: the state the config's optimizers create for the
  parameters they hold: the optim wrapper is built with the config's own
  constructor on the meta model, and for each parameter group the
  optimizer's real ``step`` runs once on a small probe parameter of the
  group's dtype and options; state tensors of the probe's size count per
  element (AdamW: ``exp_avg`` and ``exp_avg_sq``), the others once per
  parameter (AdamW's ``step``). Wrappers that need CUDA
  (``AmpOptimWrapper``) are built as ``OptimWrapper`` here: the same
  optimizer state (the loss scaler's few scalars are not counted).
* **ema**: the model's EMA copy (``ema``): parameters and buffers.
* **frozen**: parameters without gradients outside the EMA copy (frozen
  parts, a teacher) and every buffer outside it (frozen networks stored as
  buffers, codebook statistics).
* **gathered** (FSDP only): the largest training unit's full parameters
  twice (the unit computing and the next one prefetched) in the wrapper's
  ``param_dtype``, plus its full gradients once (before their
  reduce-scatter) in ``reduce_dtype``.
* **activations**: the tensors autograd saves for the backward pass of one
  generator-step forward (``mode='loss'``) at the per-GPU batch: counted
  with ``torch.autograd.graph.saved_tensors_hooks`` on the meta model,
  one count per storage, parameters and buffers excluded, the batch
  itself included. With ``activation_checkpointing`` (FSDP) only block
  inputs are kept: the count is what is saved outside the checkpointed
  blocks + every block's inputs + the largest block's own saved tensors
  (recomputed one block at a time). The forward runs in the parameters'
  dtype (float32): an upper bound for mixed-precision runs.

Sharding rule (the plan of :func:`vistok.engine.fsdp.plan_fully_shard`):
DDP keeps everything whole on every rank. FSDP splits each parameter of
the sharded parts (and of the algorithm itself when the plan shards it)
along dim 0 in chunks of ``ceil(dim0 / N)`` rows (``fully_shard``'s
padded shard; the first ranks hold full chunks), so that parameter, its
gradient and its optimizer state take ``ceil(dim0 / N) * numel / dim0``
elements per rank; replicated parts, the algorithm's own parameters when
it is not sharded, frozen parts and all buffers stay whole; the EMA copy of
a sharded part is sharded, of any other part whole.

Not counted: the CUDA context and allocator fragmentation (leave a few GB),
temporary buffers inside operators, DDP's gradient buckets (models wrapped
in ``DistributedDataParallel``: up to one more copy of the gradients; the
tokenizers average gradients themselves), autocast's weight copies. The
meta forward reads every data-dependent value as 0 and runs attention by
its math path (the ``(L, L)`` attention weights are saved): fused
attention kernels on a GPU save less.
"""
import copy
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.logging import MessageHub
from mmengine.optim import OptimWrapperDict, build_optim_wrapper
from mmengine.registry import DefaultScope
from torch.utils._python_dispatch import TorchDispatchMode

from vistok.engine.fsdp import DTYPES, FullyShardPlan, plan_fully_shard

#: elements of the probe parameter one optimizer step runs on
PROBE_NUMEL = 8
#: optimizer-wrapper types built as ``OptimWrapper`` (they need CUDA)
CUDA_WRAPPERS = ('AmpOptimWrapper', )
GIB = 1024**3
#: the columns of an estimate, in table order
COLUMNS = ('params', 'grads', 'optimizer', 'ema', 'frozen', 'gathered',
           'activations')


@dataclass
class MemoryEstimate:
    """Bytes per rank of each column (see the module docstring)."""
    strategy: str
    world_size: int
    params: int = 0
    grads: int = 0
    optimizer: int = 0
    ema: int = 0
    frozen: int = 0
    gathered: int = 0
    activations: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, name) for name in COLUMNS)

    def fits(self, gpu_memory: int) -> bool:
        return self.total <= gpu_memory

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out['total'] = self.total
        return out


def shard_numel(shape: Sequence[int], world_size: int) -> int:
    """Elements of one rank's padded ``fully_shard`` shard of a tensor of
    ``shape``: ``ceil(dim0 / world_size)`` rows of dim 0."""
    if len(shape) == 0:
        return 1
    rows = math.ceil(shape[0] / world_size)
    return rows * math.prod(shape[1:])


def parse_size(text: str) -> int:
    """``'80GiB'`` / ``'80GB'`` / ``'512MiB'`` / bytes → bytes."""
    units = dict(gib=GIB, gb=1000**3, mib=1024**2, mb=1000**2, b=1)
    lowered = text.strip().lower()
    for unit, factor in units.items():
        if lowered.endswith(unit):
            return int(float(lowered[:-len(unit)]) * factor)
    return int(float(lowered))


# --- optimizer state ---------------------------------------------------------
def _cpu_optim_wrapper_cfg(cfg):
    """``cfg`` (an optim wrapper or a dict of them) with the CUDA-only
    wrapper types replaced by ``OptimWrapper``."""
    cfg = copy.deepcopy(cfg)
    subs = [cfg] if 'optimizer' in cfg else [
        v for v in cfg.values() if isinstance(v, dict) and 'optimizer' in v]
    for sub in subs:
        if sub.get('type') in CUDA_WRAPPERS:
            sub['type'] = 'OptimWrapper'
            for key in ('dtype', 'loss_scale', 'use_fsdp'):
                sub.pop(key, None)
    return cfg


def build_optimizers(model: nn.Module,
                     optim_wrapper_cfg) -> List[torch.optim.Optimizer]:
    """The optimizers of the config's optim wrapper built on ``model``
    (with its constructor and paramwise options)."""
    import vistok.engine  # noqa: F401  (registers the constructors)
    with DefaultScope.overwrite_default_scope('vistok'):
        wrapper = build_optim_wrapper(
            model, _cpu_optim_wrapper_cfg(optim_wrapper_cfg))
    wrappers = (wrapper.optim_wrappers.values() if isinstance(
        wrapper, OptimWrapperDict) else [wrapper])
    return [w.optimizer for w in wrappers]


def state_bytes_rule(optimizer: torch.optim.Optimizer,
                     group: dict) -> Tuple[int, int]:
    """``(bytes per element, bytes per parameter)`` of the state
    ``optimizer`` keeps for a parameter of ``group``: its real ``step`` on a
    probe parameter of the group's dtype and options."""
    dtype = next((p.dtype for p in group['params']), torch.float32)
    probe = nn.Parameter(torch.zeros(PROBE_NUMEL, dtype=dtype))
    options = {k: v for k, v in group.items() if k != 'params'}
    trial = type(optimizer)([dict(params=[probe], **options)])
    probe.grad = torch.ones_like(probe)
    trial.step()
    per_element = per_param = 0
    for value in trial.state[probe].values():
        if not torch.is_tensor(value):
            continue
        if value.numel() == PROBE_NUMEL:
            per_element += value.element_size()
        else:
            per_param += value.nbytes
    return per_element, per_param


# --- where each parameter lives ----------------------------------------------
def _unit_of(name: str, plan: Optional[FullyShardPlan]) -> bool:
    """Whether the parameter ``name`` is sharded under ``plan``."""
    if plan is None:
        return False
    units = plan.blocks + plan.parts + plan.ema_blocks + plan.ema_parts
    if any(name.startswith(unit + '.') for unit in units):
        return True
    top = name.split('.')[0]
    if top == 'ema' or top in plan.replicated or top in plan.frozen:
        return False
    return plan.root  # the algorithm's own parameters, sharded with it


def _numel_per_rank(param: torch.Tensor, sharded: bool,
                    world_size: int) -> int:
    return shard_numel(param.shape, world_size) if sharded else param.numel()


def _gathered_bytes(model: nn.Module, plan: FullyShardPlan, param_dtype,
                    reduce_dtype) -> int:
    """2 x the largest training unit's full parameters (param dtype) + its
    full trainable gradients once (reduce dtype)."""
    units = plan.blocks + plan.parts + ([''] if plan.root else [])
    claimed, largest = set(), (0, 0)
    frozen = {id(p) for part in plan.frozen
              for p in model.get_submodule(part).parameters()}
    for name in units:  # inner units first: each holds what is left
        params_bytes = grads_bytes = 0
        for param in model.get_submodule(name).parameters():
            if id(param) in claimed or (name == '' and id(param) in frozen):
                continue
            claimed.add(id(param))
            size = (param_dtype or param.dtype).itemsize
            params_bytes += param.numel() * size
            if param.requires_grad:
                grads_bytes += param.numel() * (
                    reduce_dtype or param_dtype or param.dtype).itemsize
        largest = max(largest, (params_bytes, grads_bytes))
    return 2 * largest[0] + largest[1]


def state_memory(model: nn.Module,
                 optimizers: Sequence[torch.optim.Optimizer],
                 strategy: str = 'ddp', world_size: int = 1,
                 wrapper_cfg: Optional[dict] = None) -> MemoryEstimate:
    """Every column but ``activations`` for ``model`` (meta or real) and
    its built ``optimizers`` (see the module docstring)."""
    if strategy not in ('ddp', 'fsdp'):
        raise ValueError(f'strategy must be "ddp" or "fsdp", got '
                         f'{strategy!r}')
    wrapper_cfg = dict(wrapper_cfg or {})
    plan = None
    if strategy == 'fsdp':
        plan = plan_fully_shard(model, wrapper_cfg.get('block_types'),
                                wrapper_cfg.get('replicate'))
    out = MemoryEstimate(strategy, world_size)
    sharded = {}
    for name, param in model.named_parameters():
        sharded[id(param)] = _unit_of(name, plan)
        size = param.element_size() * _numel_per_rank(
            param, sharded[id(param)], world_size)
        if name.startswith('ema.'):
            out.ema += size
        elif param.requires_grad:
            out.params += size
            out.grads += size
        else:
            out.frozen += size
    for name, buffer in model.named_buffers():
        if name.startswith('ema.'):
            out.ema += buffer.nbytes
        else:
            out.frozen += buffer.nbytes
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            per_element, per_param = state_bytes_rule(optimizer, group)
            for param in group['params']:
                if not param.requires_grad:  # never stepped: no state
                    continue
                out.optimizer += per_param + per_element * _numel_per_rank(
                    param, sharded[id(param)], world_size)
    if plan is not None:
        out.gathered = _gathered_bytes(
            model, plan, DTYPES.get(wrapper_cfg.get('param_dtype')),
            DTYPES.get(wrapper_cfg.get('reduce_dtype')))
    return out


# --- activations -------------------------------------------------------------
def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


@dataclass
class ActivationCount:
    """Saved-tensor bytes of one forward: ``total``, and with every block
    checkpointed, ``checkpointed``."""
    total: int
    checkpointed: int


def count_saved_tensors(model: nn.Module, forward: Callable[[], object],
                        blocks: Sequence[str] = ()) -> ActivationCount:
    """Bytes autograd saves for the backward of ``forward()`` (a call of
    ``model``), one count per storage, ``model``'s parameters and buffers
    excluded; ``blocks`` (qualified names) are the modules whose saved
    tensors activation checkpointing would drop (see the module
    docstring)."""
    known = {_storage_key(t) for t in model.parameters()}
    known |= {_storage_key(t) for t in model.buffers()}
    saved: Dict[int, Tuple[int, Optional[str]]] = {}
    inputs: Dict[int, int] = {}
    active: List[str] = []

    def pack(tensor):
        key = _storage_key(tensor)
        if key not in known and key not in saved:
            saved[key] = (tensor.untyped_storage().nbytes(),
                          active[0] if active else None)
        return tensor

    def enter(name):
        def hook(module, args):
            if not active:  # the outermost block keeps its inputs
                for arg in args:
                    if torch.is_tensor(arg) and arg.requires_grad:
                        inputs[_storage_key(arg)] = (
                            arg.untyped_storage().nbytes())
            active.append(name)
        return hook

    def leave(module, args, output):
        active.pop()

    handles = []
    for name in blocks:
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = forward()  # noqa: F841  (keeps the graph alive)
    finally:
        for handle in handles:
            handle.remove()
    total = sum(size for size, _ in saved.values())
    outside = sum(size for size, block in saved.values() if block is None)
    per_block: Dict[str, int] = {}
    for size, block in saved.values():
        if block is not None:
            per_block[block] = per_block.get(block, 0) + size
    checkpointed = outside + sum(
        size for key, size in inputs.items()
        if saved.get(key, (0, 'in'))[1] is not None) + max(
            per_block.values(), default=0)
    return ActivationCount(total, checkpointed)


def example_batch(model: nn.Module, batch_size: int,
                  input_shape: Optional[Sequence[int]] = None,
                  device='meta') -> Tuple[object, object]:
    """``(inputs, data_samples)`` of the model's loss forward: token
    indices in its ``token_shape`` and class labels for generators,
    otherwise a ``(batch_size, *input_shape)`` float tensor."""
    shape = getattr(model, 'token_shape', None)
    if shape is not None:
        labels = torch.zeros(batch_size, dtype=torch.long, device=device)
        if isinstance(shape[0], (tuple, list)):
            return [torch.zeros(batch_size, *level, dtype=torch.long,
                                device=device) for level in shape], labels
        return torch.zeros(batch_size, *shape, dtype=torch.long,
                           device=device), labels
    if input_shape is None:
        raise ValueError(f'{type(model).__name__} takes images / volumes: '
                         f'give their (C, *spatial) shape (--input-shape)')
    return torch.zeros(batch_size, *input_shape, device=device), None


def default_input_shape(cfg) -> Optional[Tuple[int, ...]]:
    """``(C, *spatial)`` of a config's training inputs from its
    ``crop_size`` (EM volumes, 1 channel) or ``image_size`` (RGB)."""
    if cfg.get('crop_size') is not None:
        return (1, *cfg.crop_size)
    size = cfg.get('image_size')
    if size is not None:
        return (3, *((size, size) if isinstance(size, int) else size))
    return None


class _AutocastOffMeta:
    """``torch.autocast`` that is a no-op for the ``meta`` device (which
    autocast does not support; the count runs in the parameters' dtype)."""

    def __init__(self, original):
        self.original = original

    def __call__(self, device_type, *args, **kwargs):
        if device_type == 'meta':
            return nullcontext()
        return self.original(device_type, *args, **kwargs)


@contextmanager
def autocast_off_on_meta() -> Iterator[None]:
    """Models may enter ``torch.autocast(device_type=<their device>)``:
    on the meta device that is made a no-op for the duration."""
    original = torch.autocast
    torch.autocast = _AutocastOffMeta(original)
    try:
        yield
    finally:
        torch.autocast = original


class ZeroScalarsOnMeta(TorchDispatchMode):
    """Reading a value out of a meta tensor (``.item()``, ``bool(t)``, a
    data-dependent check such as ``labels.min() < 0``) gives 0 instead of
    an error, and ``bincount`` (code-usage counts) gives zeros: the count
    follows the branch a zero value takes."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and (
                args[0].device.type == 'meta'):
            dtype = args[0].dtype
            return (False if dtype == torch.bool else
                    0.0 if dtype.is_floating_point else 0)
        if func is torch.ops.aten.bincount.default and (
                args[0].device.type == 'meta'):  # no meta kernel: counts 0
            minlength = (kwargs or {}).get(
                'minlength', args[2] if len(args) > 2 else 0)
            return torch.zeros(max(minlength, 1), dtype=torch.long,
                               device='meta')
        return func(*args, **(kwargs or {}))


@contextmanager
def at_iteration(iteration: int) -> Iterator[None]:
    """The message hub's ``'iter'`` set to ``iteration`` (so scheduled
    terms such as a GAN starting at 20k are active), then restored."""
    hub = MessageHub.get_current_instance()
    old = hub.get_info('iter', None)
    hub.update_info('iter', iteration)
    try:
        yield
    finally:
        hub.update_info('iter', 0 if old is None else old)


def activation_memory(model: nn.Module, batch_size: int,
                      input_shape: Optional[Sequence[int]] = None,
                      blocks: Sequence[str] = (),
                      iteration: int = 0) -> ActivationCount:
    """:func:`count_saved_tensors` of the model's ``mode='loss'`` forward
    on an :func:`example_batch` (on the model's device) at
    ``iteration``."""
    device = next(model.parameters()).device
    inputs, data_samples = example_batch(model, batch_size, input_shape,
                                         device)
    model.train()
    with at_iteration(iteration), autocast_off_on_meta(), \
            ZeroScalarsOnMeta():
        return count_saved_tensors(
            model, lambda: model(inputs, data_samples, mode='loss'), blocks)


# --- a config ----------------------------------------------------------------
def build_meta_model(cfg) -> nn.Module:
    """The config's model on the ``meta`` device (its ``custom_imports``
    imported)."""
    import vistok.models  # noqa: F401
    from vistok.registry import MODELS
    if cfg.get('custom_imports'):
        from mmengine.utils import import_modules_from_strings
        import_modules_from_strings(**cfg.custom_imports)
    with DefaultScope.overwrite_default_scope('vistok'), \
            torch.device('meta'):
        return MODELS.build(cfg.model)


def estimate_config(cfg, strategy: str, world_size: int,
                    batch_size: Optional[int] = None,
                    input_shape: Optional[Sequence[int]] = None
                    ) -> MemoryEstimate:
    """The per-rank estimate of training ``cfg`` (a loaded mmengine
    ``Config``) on ``world_size`` ranks; FSDP options from its
    ``model_wrapper_cfg`` when it is a ``FullyShardWrapper``, else
    FSDP's defaults (no mixed precision, no activation checkpointing)."""
    model = build_meta_model(cfg)
    wrapper_cfg = cfg.get('model_wrapper_cfg') or {}
    if wrapper_cfg.get('type') != 'FullyShardWrapper':
        wrapper_cfg = {}
    out = state_memory(model, build_optimizers(model, cfg.optim_wrapper),
                       strategy, world_size, wrapper_cfg)
    checkpointing = (strategy == 'fsdp'
                     and wrapper_cfg.get('activation_checkpointing', False))
    blocks = ()
    if checkpointing:
        blocks = plan_fully_shard(model, wrapper_cfg.get('block_types'),
                                  wrapper_cfg.get('replicate')).blocks
    max_iters = (cfg.get('train_cfg') or {}).get('max_iters', 1)
    count = activation_memory(
        model, batch_size or cfg.train_dataloader.batch_size,
        input_shape or default_input_shape(cfg), blocks,
        iteration=max_iters - 1)
    out.activations = count.checkpointed if checkpointing else count.total
    return out
