"""Rank synchronisation for codebook updates (DESIGN §6: EMA updates, k-means
init and dead-code restarts are synchronised across ranks).

Thin wrappers over ``torch.distributed`` that are no-ops when no process
group is initialised, so a quantizer behaves the same as a plain module and
under DDP. Every rank must call them in the same order (as DDP already
requires of the training forward).
"""
import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether a process group is initialised (and has more than one rank)."""
    return (dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1)


def get_rank() -> int:
    """This process's rank, 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place; returns it. Every rank ends
    with the same values, so identical arithmetic on them keeps codebooks
    identical."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_from_rank0_(tensor: torch.Tensor) -> torch.Tensor:
    """Overwrite ``tensor`` on every rank with rank 0's values, in place;
    returns it. Used for choices that involve randomness (restart vectors,
    k-means centroids), which are made on rank 0 only."""
    if is_distributed():
        dist.broadcast(tensor, src=0)
    return tensor
