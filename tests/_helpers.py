"""Helpers shared by tests (importable as ``_helpers``: tests/ is on
sys.path through its conftest)."""
import os
import os.path as osp

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def subprocess_env(**extra):
    """Environment for tool subprocesses: the repo on PYTHONPATH, offline,
    one thread per process (2-core machines)."""
    env = dict(os.environ)
    env['PYTHONPATH'] = REPO_ROOT + os.pathsep + env.get('PYTHONPATH', '')
    env['HF_HUB_OFFLINE'] = '1'
    env.setdefault('OMP_NUM_THREADS', '1')
    env.update({k: str(v) for k, v in extra.items()})
    return env


def train_quantizer(quantizer, data, steps=60, lr=0.05):
    """Fit ``quantizer`` to reconstruct ``data`` with Adam on its own loss
    terms; returns ``(initial_error, final_error, final_output)`` (errors
    are the mean squared error of ``quantized`` against ``data``)."""
    import torch
    optimizer = torch.optim.Adam(quantizer.parameters(), lr=lr)

    def error():
        return ((quantizer(data).quantized - data)**2).mean().item()

    initial = error()
    for _ in range(steps):
        out = quantizer(data)
        optimizer.zero_grad()
        sum(out.loss.values()).backward()
        optimizer.step()
    return initial, error(), quantizer(data)
