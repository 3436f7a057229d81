"""Process-group set-up that also works on machines without GPUs.

mmengine 0.10.7's ``init_dist`` calls ``torch.cuda.set_device`` and defaults
to NCCL, so ``torchrun`` on a CPU machine fails inside mmengine. vistok
creates the process group itself before the Runner does (the Runner then
sees an initialised group and skips its own set-up): NCCL with one GPU per
local rank when CUDA is available, gloo otherwise.
"""
import datetime
import logging
import os
import subprocess

import torch
import torch.distributed as torch_dist
from mmengine.logging import print_log


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
