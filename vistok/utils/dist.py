"""Everything ``torch.distributed`` in vistok, on the ground floor (any layer
may import it):

* process-group set-up that also works on machines without GPUs
  (:func:`init_dist`, :func:`finalize_dist`; used by ``tools/``). mmengine
  0.10.7's ``init_dist`` calls ``torch.cuda.set_device`` and defaults to
  NCCL, so ``torchrun`` on a CPU machine fails inside mmengine. vistok
  creates the process group itself before the Runner does (the Runner then
  sees an initialised group and skips its own set-up): NCCL with one GPU per
  local rank when CUDA is available, gloo otherwise;
* rank synchronisation (DESIGN §6: codebook EMA updates, k-means init and
  dead-code restarts, LeCam statistics, gradients of algorithms with their
  own ``train_step``). These are no-ops when no process group is
  initialised, so a part behaves the same as a plain module and under DDP.
  Every rank must call them in the same order (as DDP already requires of
  the training forward).
"""
import datetime
import logging
import os
import subprocess
from typing import Iterable

import torch
import torch.distributed as torch_dist
from mmengine.logging import print_log
from torch.distributed.tensor import DTensor


def _slurm_env(port=None) -> None:
    """Translate SLURM's variables into the ones ``env://`` reads."""
    os.environ.setdefault('RANK', os.environ['SLURM_PROCID'])
    os.environ.setdefault('WORLD_SIZE', os.environ['SLURM_NTASKS'])
    os.environ.setdefault('LOCAL_RANK', os.environ.get('SLURM_LOCALID', '0'))
    if 'MASTER_ADDR' not in os.environ:
        node_list = os.environ['SLURM_NODELIST']
        os.environ['MASTER_ADDR'] = subprocess.getoutput(
            f'scontrol show hostname {node_list} | head -n1')
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    os.environ.setdefault('MASTER_PORT', '29500')


def init_dist(launcher: str, backend=None, timeout=1800, port=None,
              **kwargs) -> None:
    """Initialise ``torch.distributed`` for ``launcher`` in {'pytorch',
    'slurm'}.

    Args:
        backend: ``'nccl'``, ``'gloo'`` or ``None`` (NCCL if CUDA is
            available, else gloo). NCCL asked for on a machine without CUDA
            falls back to gloo with a warning.
        timeout: seconds before a collective gives up.
        port: master port for SLURM (else ``MASTER_PORT`` or 29500).
    """
    if torch_dist.is_initialized():
        return
    if launcher == 'slurm':
        _slurm_env(port)
    elif launcher != 'pytorch':
        raise ValueError(f"launcher must be 'pytorch' or 'slurm' for "
                         f"distributed training, got {launcher!r}")
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'):
        if key not in os.environ:
            raise RuntimeError(
                f'launcher={launcher!r} but the environment variable {key} is '
                'not set: start the job with tools/dist_train.sh (torchrun) '
                'or tools/slurm_train.sh')
    use_cuda = torch.cuda.is_available()
    if backend is None:
        backend = 'nccl' if use_cuda else 'gloo'
    elif backend == 'nccl' and not use_cuda:
        print_log('NCCL needs CUDA, which is not available: using gloo.',
                  logger='current', level=logging.WARNING)
        backend = 'gloo'
    if use_cuda:
        torch.cuda.set_device(int(os.environ['LOCAL_RANK']))
    torch_dist.init_process_group(
        backend=backend,
        rank=int(os.environ['RANK']),
        world_size=int(os.environ['WORLD_SIZE']),
        timeout=datetime.timedelta(seconds=timeout),
        **kwargs)


def finalize_dist() -> None:
    """Wait for every rank, then destroy the process group (no-op when none
    exists): a rank that exits while gloo threads of the others still talk
    to it can abort the whole job at shutdown."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()



def is_distributed() -> bool:
    """Whether a process group is initialised (and has more than one rank)."""
    return (torch_dist.is_available() and torch_dist.is_initialized()
            and torch_dist.get_world_size() > 1)


def get_rank() -> int:
    """This process's rank, 0 when not distributed."""
    return torch_dist.get_rank() if is_distributed() else 0


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place; returns it. Every rank ends
    with the same values, so identical arithmetic on them keeps codebooks
    identical."""
    if is_distributed():
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def broadcast_from_rank0_(tensor: torch.Tensor) -> torch.Tensor:
    """Overwrite ``tensor`` on every rank with rank 0's values, in place;
    returns it. Used for choices that involve randomness (restart vectors,
    k-means centroids), which are made on rank 0 only."""
    if is_distributed():
        torch_dist.broadcast(tensor, src=0)
    return tensor


@torch.no_grad()
def all_reduce_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over ranks (no-op when not
    distributed). A parameter without a gradient on some rank gets zeros
    there if any rank has one, so every rank steps the same parameters.
    Sharded parameters (``DTensor``, FSDP) are skipped: FSDP has already
    reduce-scattered their gradients."""
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad and not is_sharded(p)]
    has_grad = torch.tensor([p.grad is not None for p in params],
                            dtype=torch.float32)
    all_reduce_sum_(has_grad)
    grads = []
    for p, any_grad in zip(params, has_grad.tolist()):
        if any_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_sum_(flat).div_(torch_dist.get_world_size())
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (e.g. a parameter sharded by
    FSDP's ``fully_shard``)."""
    return isinstance(tensor, DTensor)


@torch.no_grad()
def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False,
                    foreach=None) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over parameters that may mix
    FSDP shards (``DTensor``) and whole (replicated) tensors: the norm is
    the global one — every shard's contribution summed over its ranks, each
    replicated gradient counted once — so all ranks scale by the same
    factor, the one a single process holding the full model would use.
    Returns the total norm as a plain tensor. ``foreach`` is accepted for
    signature compatibility."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    norm_type = float(norm_type)
    if not grads:
        return torch.tensor(0.0)
    local = [g.to_local() if is_sharded(g) else g for g in grads]
    sharded = [is_sharded(g) for g in grads]
    if norm_type == float('inf'):
        parts = [g.detach().abs().max().float() if g.numel() else
                 torch.zeros(()) for g in local]
        shard = max((v for v, s in zip(parts, sharded) if s),
                    default=torch.zeros(()))
        if any(sharded):
            torch_dist.all_reduce(shard, op=torch_dist.ReduceOp.MAX)
        whole = max((v for v, s in zip(parts, sharded) if not s),
                    default=torch.zeros(()))
        total = torch.maximum(shard, whole)
    else:
        parts = [torch.linalg.vector_norm(g.detach().float(), norm_type)
                 ** norm_type for g in local]
        shard = sum((v for v, s in zip(parts, sharded) if s),
                    torch.zeros(()))
        if any(sharded):
            torch_dist.all_reduce(shard)
        whole = sum((v for v, s in zip(parts, sharded) if not s),
                    torch.zeros(()))
        total = (shard + whole) ** (1.0 / norm_type)
    if error_if_nonfinite and not torch.isfinite(total):
        raise RuntimeError(f'the total norm of order {norm_type} of the '
                           f'gradients is non-finite, so it cannot be '
                           f'clipped')
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in local:
        g.mul_(coef.to(g.dtype))
    return total


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` ``(B_r, *rest)`` of every rank concatenated along dim 0 in
    rank order, differentiably; ``B_r`` may differ across ranks (padded for
    the collective, unpadded after). Without a process group: ``tensor``.

    Backward is ``torch.distributed.nn.functional.all_gather``'s: the local
    slice receives the *sum over ranks* of the gradients of its copies (a
    collective, so every rank must run the backward). When every rank
    computes the same loss ``L`` of the gathered tensor (open_clip's
    ``gather_with_grad`` with the full logit matrix), the local gradient is
    ``world_size · ∂L/∂x_local``, and averaging parameter gradients over the
    ranks (DDP, :func:`all_reduce_gradients`) gives exactly the gradient of
    ``L`` of one process holding the whole batch. Gathering without
    gradient and putting the local slice back would give only
    ``∂L/∂x_local``, ``1 / world_size`` of it after the averaging.
    """
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_gather
    world_size = torch_dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    torch_dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    longest = max(max(sizes), 1)  # no empty collectives
    padding = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
    parts = all_gather(torch.cat([tensor, padding]))
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])
