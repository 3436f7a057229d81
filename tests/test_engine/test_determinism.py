"""Same seed, same config, same machine (and thread count): bit-identical
weights on CPU by default (issue 17, finding (a)).

The drift came from ``index_put_(accumulate=True)`` — the backward of a
codebook look-up ``codes[indices]`` — which adds rows with parallel atomic
adds on CPU when more than one thread runs; the Runner now turns PyTorch's
deterministic algorithms on for CPU-only runs
(``randomness.deterministic=None``, ``VistokRunner.set_randomness``).
"""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook

from _helpers import REPO_ROOT, load_tool, torch_threads
from vistok.apis import apply_cli_options, build_runner

#: the config tools/run_demo.sh trains (README, quick start)
DEMO = osp.join(REPO_ROOT,
                'configs/vqvae/vqvae_vq-512_conv-f4_1xb8-2k_shapes-64.py')
NEVER = 10**9


@pytest.fixture(autouse=True)
def restore_deterministic_flag():
    """The Runner sets a process-global flag: leave it as found."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def demo_runner(work_dir, iters, deterministic=None):
    """The demo config unchanged but for its length and its side outputs
    (no validation, checkpoint or log lines): the same ops run."""
    cfg = Config.fromfile(DEMO)
    apply_cli_options(cfg, work_dir=str(work_dir), seed=0,
                      deterministic=deterministic, cfg_options={
                          'train_cfg.max_iters': iters,
                          'train_cfg.val_interval': NEVER,
                          'default_hooks.checkpoint.interval': NEVER,
                          'default_hooks.logger.interval': NEVER})
    cfg.log_level = 'WARNING'
    return build_runner(cfg)


def test_default_runtime_leaves_the_choice_to_the_runner():
    cfg = Config.fromfile(DEMO)
    assert cfg.randomness == dict(seed=0, deterministic=None)


@pytest.mark.parametrize('flags,value', [
    ([], None), (['--deterministic'], True),
    (['--no-deterministic'], False)])
def test_train_flag_overrides_only_when_given(flags, value):
    """``tools/train.py [--[no-]deterministic] --seed 3``: the seed never
    overwrites the config's choice; the flag does."""
    train = load_tool('tools/train.py', 'train_tool')
    args = train.parse_args([DEMO, '--seed', '3', *flags])
    assert args.deterministic is value
    cfg = Config(dict(randomness=dict(seed=0, deterministic=True)))
    apply_cli_options(cfg, work_dir='wd', seed=args.seed,
                      deterministic=args.deterministic)
    assert cfg.randomness == dict(
        seed=3, deterministic=True if value is None else value)


@pytest.mark.parametrize('deterministic,enabled', [
    (None, True), (True, True), (False, False)])
def test_cpu_runs_use_deterministic_algorithms_by_default(
        tmp_path, deterministic, enabled):
    torch.use_deterministic_algorithms(not enabled)  # not inherited
    demo_runner(tmp_path, 1, deterministic)
    assert torch.are_deterministic_algorithms_enabled() is enabled


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(TypeError, match='randomness.deterministic.*auto'):
        demo_runner(tmp_path, 1, deterministic=None).set_randomness(
            0, deterministic='auto')


def test_codebook_lookup_gradient_is_bit_identical_when_deterministic():
    """The op behind the drift: with deterministic algorithms the gradient
    of ``codes[indices]`` (2,048 look-ups of 20 codes, 32-d: more than one
    parallel grain of 32,768 elements) is the same on every call, and it
    equals the serial sum written out with ``index_add_``."""
    generator = torch.Generator().manual_seed(0)
    codes = torch.randn(512, 32, generator=generator)
    indices = torch.randint(0, 20, (2048,), generator=generator)
    upstream = torch.randn(2048, 32, generator=generator)
    expected = torch.zeros(512, 32).index_add_(0, indices, upstream)
    torch.use_deterministic_algorithms(True)
    with torch_threads(2):
        for _ in range(20):
            leaf = codes.clone().requires_grad_()
            leaf[indices].backward(upstream)
            assert torch.equal(leaf.grad, expected)


def test_two_demo_runs_give_bit_identical_weights(tmp_path):
    """Two runs of the demo config (seed 0, 30 iterations, 2 threads):
    every parameter and buffer equal bit for bit. Before the CPU default
    the runs differed by ~1e-4 after 15 iterations and ~6e-3 after 30."""

    class InitialWeights(Hook):
        def before_train(self, runner):
            self.state = {k: v.clone()
                          for k, v in runner.model.state_dict().items()}

    results = []
    with torch_threads(2):
        for name in ('a', 'b'):
            runner = demo_runner(tmp_path / name, 30)
            initial = InitialWeights()
            runner.register_hook(initial)
            runner.train()
            assert runner.iter == 30
            results.append(runner.model.state_dict())
    first, second = results
    assert set(first) == set(second)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    trained = [k for k in first if not torch.equal(first[k],
                                                   initial.state[k])]
    assert 'quantizer.codebook' in trained and len(trained) > 40
