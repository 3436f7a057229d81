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
