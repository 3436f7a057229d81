"""Helpers shared by tests (importable as ``_helpers``: tests/ is on
sys.path through its conftest)."""
import contextlib
import importlib.util
import os
import os.path as osp
import socket

import torch

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def flatten(tree, prefix=''):
    """``{'a.b.c': leaf}`` of nested dicts (lists and empty dicts are
    leaves): two configs flattened differ exactly in the keys one
    overrides."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(flatten(value, f'{prefix}.{key}' if prefix else key))
    return flat


def seeded_draws(dataset, num_workers: int, batches: int = 4,
                 batch_size: int = 2, seed: int = 3) -> torch.Tensor:
    """The ``inputs`` of the first ``batches`` batches of ``dataset`` drawn
    by a seeded :class:`~vistok.datasets.samplers.ResumableInfiniteSampler`
    with ``num_workers`` DataLoader workers, concatenated: equal for any
    number of workers when the per-sample augmentation is seeded."""
    from torch.utils.data import DataLoader

    from vistok.datasets.samplers import ResumableInfiniteSampler
    sampler = ResumableInfiniteSampler(dataset, shuffle=True, seed=seed)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                        num_workers=num_workers,
                        collate_fn=lambda batch: torch.stack(
                            [b['inputs'] for b in batch]))
    drawn = []
    for batch in loader:
        drawn.append(batch)
        if len(drawn) == batches:
            break
    return torch.cat(drawn)


def load_tool(path: str, name: str):
    """The tool script at ``path`` (relative to the repo) imported as a
    module called ``name``."""
    spec = importlib.util.spec_from_file_location(name,
                                                  osp.join(REPO_ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def torch_threads(num_threads: int):
    """Run the block with ``num_threads`` intra-op threads. Results compared
    bit for bit (or to 1e-5) with subprocesses of :func:`subprocess_env`
    must use their thread count: MKL's conv / matmul reductions depend on it
    (on AVX-512 machines the difference reaches 1e-5 after one Adam step)."""
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def free_port() -> int:
    """A TCP port on localhost that is free now (bound to port 0 and
    released), for the rendezvous of torchrun / gloo tests: a fixed port
    collides with a concurrent run on the same machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


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


def save_random_vgg16(path):
    """Save a randomly initialised VGG16 like a torchvision state dict
    (``features.N.*`` plus a classifier entry that LPIPS ignores); returns
    ``str(path)``."""
    import torch

    from vistok.models.losses.perceptual import vgg16_features
    torch.manual_seed(0)
    state = {
        f'features.{k}': v
        for k, v in vgg16_features().state_dict().items()
    }
    state['classifier.6.bias'] = torch.zeros(1000)
    torch.save(state, path)
    return str(path)


def lpips_package_model(vgg_file):
    """The ``lpips`` package's LPIPS (VGG, v0.1 heads) with the trunk of
    ``vgg_file`` (its slices keep torchvision's layer indices:
    ``sliceK.N.*`` ← ``features.N.*``)."""
    import warnings

    import lpips
    import torch
    with warnings.catch_warnings():  # lpips calls vgg16(pretrained=False)
        warnings.simplefilter('ignore', UserWarning)
        model = lpips.LPIPS(net='vgg', pnet_rand=True, pretrained=True,
                            verbose=False).eval()
    trunk = torch.load(vgg_file)
    model.net.load_state_dict({
        name: trunk['features.' + name.split('.', 1)[1]]
        for name in model.net.state_dict()
    })
    return model


def load_train_config(path: str, work_dir, iters: int, options: dict):
    """Config ``path`` set up for a short training run in ``work_dir``:
    ``iters`` iterations, one validation and one checkpoint at the end,
    seed 0, quiet logs, plus ``options`` (``--cfg-options`` keys)."""
    from mmengine.config import Config

    from vistok.apis import apply_cli_options
    cfg = Config.fromfile(path)
    options = dict(options)
    options.update({'train_cfg.max_iters': iters,
                    'train_cfg.val_interval': iters,
                    'default_hooks.checkpoint.interval': iters})
    apply_cli_options(cfg, work_dir=str(work_dir), seed=0,
                      cfg_options=options)
    cfg.log_level = 'WARNING'
    return cfg


def train_config(cfg):
    """Train ``cfg``; returns the runner and the history of every logged
    training scalar (name without the ``train/`` prefix -> array)."""
    from vistok.apis import build_runner
    runner = build_runner(cfg)
    runner.train()
    history = {
        key[len('train/'):]: scalar.data[0]
        for key, scalar in runner.message_hub.log_scalars.items()
        if key.startswith('train/')
    }
    return runner, history

