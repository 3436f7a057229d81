"""Fully sharded data parallelism: PyTorch's ``fully_shard`` ("FSDP2") in
the Runner.

``model_wrapper_cfg=dict(type='FullyShardWrapper', ...)`` in a config (one
key away from its DDP parent: the ``*_fsdp.py`` configs) shards
the model over the ranks of a ``torchrun`` / Slurm job: every rank holds
``1 / world_size`` of each sharded parameter, of its gradient and of its
optimizer state, and all-gathers a unit's full parameters just for that
unit's forward and backward (mmengine 0.10's own FSDP strategy targets the
older ``FullyShardedDataParallel`` API and CUDA; vistok does not use it).

**What is sharded** (:func:`plan_fully_shard`, printed at start-up):

* **Blocks.** Every module whose class is one of ``block_types`` (the
  config's, else the model's ``FSDP_BLOCK_TYPES``: transformer blocks,
  Mamba layers, conv stages) is one FSDP unit, inner before outer.
* **Parts, last.** Each top-level child of the algorithm that has trainable
  parameters (encoder, decoder, discriminator, backbone, head, ...) is then
  sharded as the root of its own units; it holds what its blocks leave.
  The algorithm itself is not sharded: its ``train_step`` calls its parts
  directly (a generator step, then a discriminator step), never one
  ``forward``, so each part gathers its weights when it is called.
* **The discriminator is sharded** like any part, and steps with its own
  optimizer: FSDP reduce-scatters each backward's gradients, so the G/D
  step of :class:`~vistok.models.tokenizers.BaseTokenizer` is unchanged.
* **The EMA copy is sharded like the model**: each copied part gets the
  same units, so the average is computed shard by shard and the copy swaps
  in for validation as before.
* **Replicated parts** (the model's ``FSDP_REPLICATED``, or ``replicate``):
  kept whole on every rank, their gradients averaged by the algorithm's own
  step (:func:`vistok.utils.dist.all_reduce_gradients` skips sharded
  parameters). Tokenizers replicate their quantizer: codebooks are small and
  are written inside the forward pass (k-means initialisation, dead-code
  restarts, EMA codebooks), which a gathered copy would lose. Only models
  that average their own gradients (``syncs_gradients``) may replicate
  trainable parts.
* **Frozen parts are not sharded**: a part without trainable parameters
  (a perceptual network, a frozen teacher, ``frozen_parts``) has no
  gradients or optimizer state, so sharding would save only ``1 /
  world_size`` of its weights at the cost of an all-gather per use.

**Options.** ``param_dtype`` / ``reduce_dtype`` (``'bfloat16'``,
``'float16'``, ``'float32'``; default: the parameters' own) are FSDP's
``MixedPrecisionPolicy``: blocks compute in ``param_dtype``, gradients are
reduced in ``reduce_dtype``, the sharded (master) weights and the optimizer
stay float32, and parts hand each other float32 outputs.
``activation_checkpointing=True`` recomputes each block's activations in the
backward pass. ``offload_params=True`` keeps the shards in CPU memory
(FSDP's ``CPUOffloadPolicy``; needs GPUs). ``reshard_after_forward``
(default ``True``) frees the gathered weights after each unit's forward.

**Steps.** Gradient accumulation (``accumulative_counts``) reduce-scatters
every micro-batch into the accumulated shards (the sum of averages is the
average of sums); gradient clipping by norm uses the global norm over all
shards and the replicated parameters
(:func:`vistok.utils.dist.clip_grad_norm_`). Checkpoints are sharded
(:mod:`vistok.utils.dcp`, written by :class:`~vistok.engine.runner.
VistokRunner`).
"""
import logging
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from mmengine.logging import print_log
from torch.distributed._composable import checkpoint
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)

from vistok.registry import MODEL_WRAPPERS
from vistok.utils.dist import broadcast_from_rank0_, is_distributed

DTYPES = dict(bfloat16=torch.bfloat16, float16=torch.float16,
              float32=torch.float32)


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _ema_of(model: nn.Module):
    """The model's EMA copy (a ``ModelEMA``-like ``ModuleDict`` of copied
    parts named ``ema``), or ``None``."""
    ema = getattr(model, 'ema', None)
    return ema if isinstance(ema, nn.ModuleDict) else None


@dataclass
class FullyShardPlan:
    """Which modules ``fully_shard`` is applied to, by qualified name.

    Attributes:
        blocks: block units, in the order they are sharded (inner first).
        parts: top-level parts sharded as roots of their units (after
            their blocks); a container part (``ModuleList``) is rooted by
            its children.
        ema_blocks / ema_parts: the same for the EMA copy
            (``ema.<part>...``).
        replicated: trainable top-level parts kept whole on every rank.
        frozen: top-level parts without trainable parameters (not
            sharded).
        root_params: trainable parameters held by the algorithm itself
            (replicated, or sharded with ``root``).
        root: the algorithm itself is sharded last, holding
            ``root_params`` (a model that does not average its own
            gradients, e.g. VAR's position embeddings; its forward is one
            call).
        keep_gathered: units that keep their gathered weights from the
            forward to the backward pass, because the algorithm reads one
            of them outside the unit's forward (the model's
            ``fsdp_gathered_parameters()``: e.g. the adaptive GAN weight's
            gradient at the decoder's last layer).
    """
    blocks: List[str] = field(default_factory=list)
    parts: List[str] = field(default_factory=list)
    ema_blocks: List[str] = field(default_factory=list)
    ema_parts: List[str] = field(default_factory=list)
    replicated: List[str] = field(default_factory=list)
    frozen: List[str] = field(default_factory=list)
    root_params: List[str] = field(default_factory=list)
    root: bool = False
    keep_gathered: List[str] = field(default_factory=list)

    def sharded_modules(self) -> List[str]:
        """Every module ``fully_shard`` is applied to, in order (``''``:
        the algorithm itself)."""
        return (self.blocks + self.parts + self.ema_blocks + self.ema_parts
                + ([''] if self.root else []))

    def summary(self) -> str:
        synced = self.root_params and not self.root
        return (f'FSDP: {len(self.blocks)} blocks in parts {self.parts} '
                f'(EMA copy: {len(self.ema_blocks)} blocks in '
                f'{self.ema_parts}); replicated {self.replicated}'
                f'{" + root parameters" if synced else ""}; '
                f'not sharded (frozen) {self.frozen}'
                f'{"; the algorithm sharded last" if self.root else ""}')


def _block_names(part: nn.Module, prefix: str,
                 block_types: Sequence[str]) -> List[str]:
    """Qualified names of the trainable modules of ``part`` whose class is
    in ``block_types``, inner before outer."""
    found = [f'{prefix}.{name}' if name else prefix
             for name, module in part.named_modules()
             if type(module).__name__ in block_types and _trainable(module)
             and name]
    # named_modules is pre-order: reversed, every block precedes its parents
    return found[::-1]


def plan_fully_shard(model: nn.Module,
                     block_types: Optional[Sequence[str]] = None,
                     replicate: Optional[Sequence[str]] = None
                     ) -> FullyShardPlan:
    """What :class:`FullyShardWrapper` shards in ``model`` (see the module
    docstring); also used by ``tools/analysis/estimate_memory.py``.

    Args:
        block_types: class names of the blocks (default: the model's
            ``FSDP_BLOCK_TYPES``, of which a variant may lack some); a name
            given here that matches no module is an error.
        replicate: top-level parts kept whole (default: the model's
            ``FSDP_REPLICATED``).
    """
    present = {type(m).__name__ for m in model.modules()}
    if block_types is None:  # the model's declaration covers its variants
        block_types = tuple(getattr(model, 'FSDP_BLOCK_TYPES', ()))
    else:
        if isinstance(block_types, str):
            block_types = (block_types, )
        block_types = tuple(block_types)
        missing = [name for name in block_types if name not in present]
        if missing:
            raise ValueError(
                f'model_wrapper_cfg.block_types: {missing} match no module '
                f'of {type(model).__name__}; its module classes are '
                f'{sorted(present)}')
    if replicate is None:
        replicate = tuple(getattr(model, 'FSDP_REPLICATED', ()))
    children = dict(model.named_children())
    unknown = set(replicate) - set(children)
    if unknown:
        raise ValueError(f'model_wrapper_cfg.replicate: {sorted(unknown)} '
                         f'are not parts of {type(model).__name__}: '
                         f'{sorted(children)}')

    plan = FullyShardPlan()
    ema = _ema_of(model)
    roots = {}  # sharded top-level part -> its part roots
    for name, child in children.items():
        if child is ema:
            continue
        if not _trainable(child):
            if any(True for _ in child.parameters()):
                plan.frozen.append(name)
        elif name in replicate:
            plan.replicated.append(name)
        else:
            blocks = _block_names(child, name, block_types)
            plan.blocks += blocks
            roots[name] = _part_roots(child, name, set(blocks))
            plan.parts += roots[name]
    plan.root_params = [name for name, p in model.named_parameters(
        recurse=False) if p.requires_grad]
    if ema is not None:
        for name, copy in ema.named_children():
            if name in roots:
                live = set(_block_names(children[name], name, block_types))
                plan.ema_blocks += [f'ema.{block}' for block in
                                    _ema_blocks(copy, name, live)]
                plan.ema_parts += [f'ema.{root}' for root in roots[name]]
    if (plan.root_params and not plan.replicated
            and not getattr(model, 'syncs_gradients', False)):
        plan.root = True  # its own parameters sharded with it, last
    gathered = getattr(model, 'fsdp_gathered_parameters', None)
    units = plan.blocks + plan.parts
    for param in (gathered() if gathered is not None else ()):
        owners = [u for u in units if param.startswith(u + '.')]
        if owners:  # the innermost unit holding it
            unit = max(owners, key=len)
            if unit not in plan.keep_gathered:
                plan.keep_gathered.append(unit)
    needs_sync = plan.replicated or (plan.root_params and not plan.root)
    if needs_sync and not getattr(model, 'syncs_gradients', False):
        raise ValueError(
            f'{type(model).__name__} does not average its own gradients '
            f'(syncs_gradients), so every trainable parameter must be '
            f'sharded: replicated parts {plan.replicated}, root parameters '
            f'{plan.root_params}')
    return plan


def _part_roots(part: nn.Module, name: str, blocks: set) -> List[str]:
    """The modules that root the units of the sharded part ``name``: the
    part itself, or, for a container without a forward (``ModuleList`` /
    ``ModuleDict``, e.g. VAR's ``blocks``), its trainable children that are
    not blocks already, recursively (``fully_shard`` needs a forward)."""
    if not isinstance(part, (nn.ModuleList, nn.ModuleDict)):
        return [name]
    found = []
    for key, child in part.named_children():
        qualified = f'{name}.{key}'
        if qualified not in blocks and _trainable(child):
            found += _part_roots(child, qualified, blocks)
    return found


def _ema_blocks(copy: nn.Module, prefix: str, live: set) -> List[str]:
    """The EMA copy's modules at the qualified names of the live part's
    blocks (the copy has no trainable parameters), inner first."""
    names = [f'{prefix}.{name}' for name, _ in copy.named_modules() if name]
    return [name for name in names[::-1] if name in live]


def _dtype(value, key: str):
    if value is None or isinstance(value, torch.dtype):
        return value
    if value not in DTYPES:
        raise ValueError(f'model_wrapper_cfg.{key} must be one of '
                         f'{sorted(DTYPES)}, got {value!r}')
    return DTYPES[value]


@MODEL_WRAPPERS.register_module()
class FullyShardWrapper(nn.Module):
    """Shards ``module`` in place with ``fully_shard`` (see the module
    docstring) and forwards the Runner's calls to it.

    The wrapper is built with the Runner, but shards in :meth:`shard`, which
    the Runner calls where mmengine initialises weights
    (``_init_model_weights``, after the optimizers are built): the full
    model is initialised there, at the same point of the random stream as
    an unsharded run, so a seed gives the same run with or without FSDP;
    every rank then takes rank 0's weights and buffers and keeps its
    shards, and the optimizers are pointed at the sharded parameters.
    Until then (e.g. ``tools/test.py``) the model runs whole on each rank.

    Args:
        module: the algorithm.
        block_types: class names of the FSDP units (default: the model's
            ``FSDP_BLOCK_TYPES``).
        replicate: top-level parts kept whole (default: the model's
            ``FSDP_REPLICATED``).
        param_dtype, reduce_dtype: FSDP's mixed-precision policy
            (``'bfloat16'``, ``'float16'``, ``'float32'`` or ``None``: the
            parameters' dtype).
        activation_checkpointing: recompute each block's activations in
            the backward pass.
        offload_params: keep the shards in CPU memory (needs GPUs).
        reshard_after_forward: free gathered weights after each unit's
            forward (``False``: keep them until the backward, faster and
            larger).
    """

    def __init__(self, module: nn.Module,
                 block_types: Optional[Sequence[str]] = None,
                 replicate: Optional[Sequence[str]] = None,
                 param_dtype=None, reduce_dtype=None,
                 activation_checkpointing: bool = False,
                 offload_params: bool = False,
                 reshard_after_forward: bool = True):
        super().__init__()
        self.param_dtype = _dtype(param_dtype, 'param_dtype')
        self.reduce_dtype = _dtype(reduce_dtype, 'reduce_dtype')
        if offload_params and not torch.cuda.is_available():
            raise ValueError('model_wrapper_cfg.offload_params=True keeps '
                             'the shards in CPU memory between uses of the '
                             'GPU: there is no GPU on this machine')
        if not is_distributed():
            raise RuntimeError(
                'FullyShardWrapper needs a process group of more than one '
                'rank: start the job with tools/dist_train.sh or '
                'tools/slurm_train.sh (a single process trains unwrapped)')
        self.plan = plan_fully_shard(module, block_types, replicate)
        self.activation_checkpointing = activation_checkpointing
        self.offload_params = offload_params
        self.reshard_after_forward = reshard_after_forward
        self.is_sharded = False
        self.module = module

    def shard(self, init_weights: bool = True,
              optimizers: Sequence[torch.optim.Optimizer] = ()) -> None:
        """Initialise the full model (``init_weights()``), make all ranks
        equal to rank 0, shard it, and replace the parameters in
        ``optimizers`` (built on the full model, without state yet) by
        their shards."""
        if self.is_sharded:
            raise RuntimeError('the model is already sharded')
        module = self.module
        if init_weights and hasattr(module, 'init_weights'):
            module.init_weights()
        for tensor in list(module.parameters()) + list(module.buffers()):
            broadcast_from_rank0_(tensor.data)
        names = {id(p): name for name, p in module.named_parameters()}
        print_log(self.plan.summary(), logger='current', level=logging.INFO)

        use_cuda = torch.cuda.is_available()
        mesh = init_device_mesh('cuda' if use_cuda else 'cpu',
                                (torch.distributed.get_world_size(), ))
        offload = (CPUOffloadPolicy() if self.offload_params else
                   OffloadPolicy())
        block_policy = MixedPrecisionPolicy(param_dtype=self.param_dtype,
                                            reduce_dtype=self.reduce_dtype)
        # parts hand each other float32 outputs (replicated parts, losses)
        part_policy = MixedPrecisionPolicy(
            param_dtype=self.param_dtype, reduce_dtype=self.reduce_dtype,
            output_dtype=(torch.float32 if self.param_dtype is not None
                          else None))
        blocks = set(self.plan.blocks + self.plan.ema_blocks)
        if self.activation_checkpointing:
            for name in self.plan.blocks:
                checkpoint(module.get_submodule(name))
        # the sharded root leaves the frozen parts whole
        frozen = {p for part in self.plan.frozen
                  for p in module.get_submodule(part).parameters()}
        for name in self.plan.sharded_modules():
            fully_shard(module.get_submodule(name), mesh=mesh,
                        reshard_after_forward=self.reshard_after_forward
                        and name not in self.plan.keep_gathered,
                        mp_policy=block_policy if name in blocks else
                        part_policy, offload_policy=offload,
                        ignored_params=frozen if name == '' and frozen
                        else None)
        self.is_sharded = True

        sharded = dict(module.named_parameters())
        for optimizer in optimizers:
            if optimizer.state:
                raise RuntimeError('shard() must run before the first '
                                   'optimizer step')
            for group in optimizer.param_groups:
                group['params'] = [sharded[names[id(p)]]
                                   for p in group['params']]

    def train_step(self, data, optim_wrapper):
        return self.module.train_step(data, optim_wrapper)

    def val_step(self, data):
        return self.module.val_step(data)

    def test_step(self, data):
        return self.module.test_step(data)
