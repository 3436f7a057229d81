"""Self-check of what only a GPU machine can show, run by hand (not in CI).

    python tools/analysis/gpu_selfcheck.py [--checks NAME ...]
        [--work-dir DIR] [--config CFG] [--gan-config CFG]
        [--drop-rng-state]

It prints one line per check, ``PASS <name>: <measured numbers>``,
``FAIL <name>: <measured numbers or the error>`` or ``SKIP <name>:
<reason>``, and exits with status 1 if any check failed (else 0).

Checks (the tiny test configs by default; every run is seeded):

* ``mamba-selective-scan``, ``mamba-causal-conv1d``, ``mamba-mixer``
  (CUDA): mamba-ssm's / causal-conv1d's kernels (``impl='cuda'``) against
  vistok's PyTorch scan and convolution (``impl='torch'``), values and
  gradients, on float32 CUDA tensors; the mixer with every scan direction.
* ``amp-fp16-two-optimizers`` (CUDA): ``--amp`` on the GAN config
  (generator and discriminator optimizers, each an ``AmpOptimWrapper``
  with its own dynamic loss scale) for 20 iterations: every logged loss
  finite, the weights finite, both optimizers updated their parts, and
  both loss scales move (a growth interval of 5 iterations is set so that
  a healthy run grows them).
* ``ddp-gloo-cpu`` (CPU analogue) / ``ddp-nccl-2gpu`` (2 GPUs):
  ``tools/dist_train.sh CONFIG 2`` (2 x batch 4) gives the weights of one
  process with batch 8 after 3 iterations (dropout off: the ranks draw
  other masks than one process).
* ``resume-rng-cpu`` (CPU analogue) / ``resume-rng-cuda`` (CUDA): a run
  resumed from its iteration-2 checkpoint continues as the uninterrupted
  run (the config has dropout, so the restored RNG states matter): the
  losses of iterations 3 and 4 and the final weights; bit for bit on CPU,
  losses to 1e-4 on CUDA (cuDNN's and atomic-add reductions are not
  bit-reproducible).

The CPU analogues run when no CUDA device is visible (this process then
trains on the CPU); on a CUDA machine they SKIP (the test suite runs them)
and the CUDA checks run instead. ``--drop-rng-state`` resumes the
``resume-rng-*`` checks from a copy of the checkpoint without its RNG
states: they must then FAIL, which shows that they can detect a resume that
does not restore the random streams.
"""
import argparse
import os
import os.path as osp
import shutil
import socket
import subprocess
import sys
import tempfile
import traceback

# the repository root on sys.path: vistok imports from a checkout
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

# before CUDA is initialised: no TF32 in cuBLAS / cuDNN, so GPU float32
# results are compared as float32 (also inherited by the subprocesses)
os.environ.setdefault('NVIDIA_TF32_OVERRIDE', '0')

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402

from vistok.apis import apply_cli_options, build_runner  # noqa: E402
from vistok.models.backbones.mamba import (  # noqa: E402
    MambaMixer,
    causal_conv1d,
    selective_scan,
)
from vistok.utils.checkpoint import (  # noqa: E402
    load_checkpoint_file,
    save_checkpoint_atomic,
)

TINY = osp.join(ROOT, 'tests/data/configs/tiny_vqvae.py')
TINY_GAN = osp.join(ROOT, 'tests/data/configs/tiny_vqgan.py')
SEED = 0
NO_VALIDATION = {'val_cfg': None, 'val_dataloader': None,
                 'val_evaluator': None, 'log_level': 'WARNING'}

#: kernels vs the torch path, as max |a - b| / max |b| per tensor. mamba-ssm's
#: own float32 test of the kernel against its reference (state-spaces/mamba
#: tests/ops/test_selective_scan.py at 014340f4) asserts rtol 6e-4, atol
#: 2e-3 on outputs of magnitude ~1 and only prints the gradient errors;
#: 2e-3 of a tensor's largest magnitude applies that bound to every tensor.
#: The inputs follow that test's distribution (Δ, -A, Δ bias in [0, 0.5]).
KERNEL_TOL = 2e-3
#: the modules vistok's impl='cuda' paths import
MAMBA_SSM = 'mamba_ssm.ops.selective_scan_interface'
CAUSAL_CONV1D = 'causal_conv1d'
SCAN_SHAPE = dict(batch=2, dim=8, d_state=8, length=300)  # 5 torch chunks

DDP_PROCESSES = 2
DDP_RANK_BATCH = 4
DDP_ITERS = 3
#: 2 x batch 4 vs 1 x batch 8: the averaged gradients differ in float32
#: rounding. On CPU the bound of tests/test_engine/test_runner.py (measured
#: max |dw| 5e-6); ranks that do not average their gradients give 2e-3.
#: On CUDA (TF32 off) 10x looser for cuDNN's batch-size-dependent kernels:
#: a judgement, not yet measured on a GPU.
DDP_TOL = {'cpu': dict(rtol=1e-4, atol=1e-5),
           'cuda': dict(rtol=1e-3, atol=1e-4)}

RESUME_ITERS = 4
RESUME_AT = 2
#: losses of the resumed iterations, relative; dropout masks drawn from a
#: stream that was not restored change them (0.12 measured on CPU)
RESUME_LOSS_RTOL = {'cpu': 0.0, 'cuda': 1e-4}

AMP_ITERS = 20
AMP_GROWTH_INTERVAL = 5  # GradScaler's default (2000) never moves in 20


class Record(Hook):
    """Initial weights, and every iteration's logged losses and the loss
    scale of each optimizer wrapper that has one."""
    priority = 'LOWEST'

    def __init__(self):
        self.initial = None
        self.losses, self.scales = {}, {}

    def before_train(self, runner):
        self.initial = weights(runner)

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.losses[runner.iter + 1] = {
            k: float(v.detach()) if torch.is_tensor(v) else float(v)
            for k, v in outputs.items()}
        wrappers = runner.optim_wrapper
        wrappers = (dict(wrappers.items()) if hasattr(wrappers, 'items')
                    else {'optim_wrapper': wrappers})
        for name, wrapper in wrappers.items():
            scaler = getattr(wrapper, 'loss_scaler', None)
            if scaler is not None:
                self.scales.setdefault(name, []).append(scaler.get_scale())


def weights(runner):
    return {k: v.detach().cpu().clone()
            for k, v in runner.model.state_dict().items()}


def train(config, work_dir, options, resume=None, amp=False):
    """Train ``config`` in this process (on CUDA when it is visible);
    returns the runner and its :class:`Record`."""
    cfg = Config.fromfile(config)
    apply_cli_options(cfg, work_dir=work_dir, resume=resume, amp=amp,
                      seed=SEED, cfg_options=dict(NO_VALIDATION, **options))
    runner = build_runner(cfg)
    record = Record()
    runner.register_hook(record)
    runner.train()
    return runner, record


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def compare(actual, expected, rtol, atol):
    """``(ok, max |a - e|, worst key)`` over two state dicts."""
    if set(actual) != set(expected):
        raise KeyError(f'state dicts differ in keys: '
                       f'{sorted(set(actual) ^ set(expected))[:5]}')
    ok, worst, worst_key = True, 0.0, '-'
    for key, value in expected.items():
        other = actual[key]
        if not value.is_floating_point():
            ok &= torch.equal(other, value)
            continue
        diff = (other.double() - value.double()).abs().max().item()
        ok &= torch.allclose(other, value, rtol=rtol, atol=atol)
        if diff > worst:
            worst, worst_key = diff, key
    return ok, worst, worst_key


def relative_error(actual, expected):
    scale = expected.abs().max().item()
    return (actual - expected).abs().max().item() / max(scale, 1e-30)


def kernel_vs_torch(fn, inputs):
    """Run ``fn(impl, **inputs)`` with ``impl='cuda'`` and ``'torch'`` on
    copies of ``inputs``; ``(ok, message)`` from the relative errors of
    the output and of every input's gradient."""
    results = {}
    for impl in ('cuda', 'torch'):
        leaves = {k: v.detach().clone().requires_grad_()
                  for k, v in inputs.items()}
        out = fn(impl, **leaves)
        grad = torch.randn(out.shape, generator=torch.Generator(
            out.device).manual_seed(SEED), device=out.device)
        grads = torch.autograd.grad(out, list(leaves.values()), grad)
        results[impl] = dict(out=out, **{
            f'd{k}': g for k, g in zip(leaves, grads)})
    errors = {k: relative_error(results['cuda'][k], results['torch'][k])
              for k in results['torch']}
    gradient = max((k for k in errors if k != 'out'), key=errors.get)
    ok = all(error <= KERNEL_TOL for error in errors.values())  # NaN fails
    return ok, (f'relative error of the output {errors["out"]:.2e}, of the '
                f'gradients up to {errors[gradient]:.2e} ({gradient}) '
                f'[tolerance {KERNEL_TOL:g}]')


def need_cuda(devices=1):
    if not torch.cuda.is_available():
        return 'no CUDA device'
    if torch.cuda.device_count() < devices:
        return (f'needs {devices} CUDA devices, '
                f'{torch.cuda.device_count()} visible')
    return None


def need_package(module):
    try:
        __import__(module)
    except Exception as error:  # ImportError or a broken CUDA build
        return f'{module} is not importable ({type(error).__name__}: ' \
               f'{str(error).splitlines()[0] if str(error) else ""})'
    return None


# --- checks: each returns (status, message) --------------------------------
def check_selective_scan(args):
    reason = need_cuda() or need_package(MAMBA_SSM)
    if reason:
        return 'SKIP', reason
    g = torch.Generator('cuda').manual_seed(SEED)
    b, d, n, length = (SCAN_SHAPE[k]
                       for k in ('batch', 'dim', 'd_state', 'length'))

    def rand(*shape):
        return torch.rand(*shape, generator=g, device='cuda')

    def randn(*shape):
        return torch.randn(*shape, generator=g, device='cuda')

    # mamba-ssm's test distribution: Δ, -A and Δ bias uniform in [0, 0.5];
    # B and C in 2 groups of channels
    inputs = dict(u=randn(b, d, length), delta=0.5 * rand(b, d, length),
                  A=-0.5 * rand(d, n), B=randn(b, 2, n, length),
                  C=randn(b, 2, n, length), D=randn(d),
                  z=randn(b, d, length), delta_bias=0.5 * rand(d))

    def scan(impl, **kw):
        return selective_scan(**kw, delta_softplus=True, impl=impl)

    ok, message = kernel_vs_torch(scan, inputs)
    return ('PASS' if ok else 'FAIL'), message


def check_causal_conv1d(args):
    reason = need_cuda() or need_package(CAUSAL_CONV1D)
    if reason:
        return 'SKIP', reason
    g = torch.Generator('cuda').manual_seed(SEED)
    b, d, length = (SCAN_SHAPE[k] for k in ('batch', 'dim', 'length'))
    inputs = dict(
        x=torch.randn(b, d, length, generator=g, device='cuda'),
        weight=torch.randn(d, 4, generator=g, device='cuda'),
        bias=torch.randn(d, generator=g, device='cuda'))

    def conv(impl, **kw):
        return causal_conv1d(**kw, activation='silu', impl=impl)

    ok, message = kernel_vs_torch(conv, inputs)
    return ('PASS' if ok else 'FAIL'), message


def check_mixer(args):
    reason = (need_cuda() or need_package(MAMBA_SSM)
              or need_package(CAUSAL_CONV1D))
    if reason:
        return 'SKIP', reason
    torch.manual_seed(SEED)
    kw = dict(d_model=16, d_state=8,
              directions=('forward', 'backward', 'inter_slice'))
    mixers = {impl: MambaMixer(**kw, impl=impl).cuda()
              for impl in ('torch', 'cuda')}
    mixers['cuda'].load_state_dict(mixers['torch'].state_dict())
    x = torch.randn(2, 16, 4, 6, 6, device='cuda')  # 4 slices of 6 x 6

    def mixer(impl, x, **params):
        return torch.func.functional_call(mixers[impl], params, (x, ))

    params = {k: v.detach() for k, v in mixers['torch'].named_parameters()}
    ok, message = kernel_vs_torch(mixer, dict(x=x, **params))
    return ('PASS' if ok else 'FAIL'), message


def check_amp(args):
    reason = need_cuda()
    if reason:
        return 'SKIP', reason
    scale = dict(growth_interval=AMP_GROWTH_INTERVAL)
    options = {'train_cfg.max_iters': AMP_ITERS,
               'default_hooks.checkpoint.interval': AMP_ITERS,
               'optim_wrapper.generator.loss_scale': scale,
               'optim_wrapper.discriminator.loss_scale': scale}
    runner, record = train(args.gan_config, osp.join(args.work_dir, 'amp'),
                           options, amp=True)
    types = {name: type(w).__name__
             for name, w in runner.optim_wrapper.items()}
    losses = [v for it in record.losses.values() for v in it.values()]
    finite = all(torch.isfinite(torch.tensor(v)) for v in losses)
    finite_weights = all(torch.isfinite(v).all()
                         for v in weights(runner).values()
                         if v.is_floating_point())
    moved = {name: len(set(s)) > 1 for name, s in record.scales.items()}
    final = weights(runner)
    changed = [k for k, v in final.items()
               if not torch.equal(v, record.initial[k])]
    stepped = {  # each optimizer updated its part at least once
        'generator': any(not k.startswith(('discriminator.', 'ema.'))
                         for k in changed),
        'discriminator': any(k.startswith('discriminator.')
                             for k in changed)}
    ok = (set(types.values()) == {'AmpOptimWrapper'} and len(types) == 2
          and len(record.losses) == AMP_ITERS and finite and finite_weights
          and len(moved) == 2 and all(moved.values())
          and all(stepped.values()))
    scales = ', '.join(f'{name} {s[0]:g} -> {s[-1]:g}'
                       for name, s in record.scales.items()) or 'none'
    return ('PASS' if ok else 'FAIL'), (
        f'{len(record.losses)} iterations, wrappers {types}, losses finite '
        f'{finite} (max |loss| {max(abs(v) for v in losses):.3g}), weights '
        f'finite {finite_weights}, weights updated {stepped}, loss scales '
        f'{scales}')


def check_ddp(args, device):
    work_dir = osp.join(args.work_dir, f'ddp_{device}')
    common = {'model.encoder.dropout': 0.0, 'model.decoder.dropout': 0.0,
              'train_cfg.max_iters': DDP_ITERS,
              'default_hooks.checkpoint.interval': DDP_ITERS}
    single, record = train(
        args.config, osp.join(work_dir, 'one'),
        dict(common, **{'train_dataloader.batch_size':
                        DDP_PROCESSES * DDP_RANK_BATCH}))
    options = [f'{k}={v}' for k, v in dict(NO_VALIDATION, **common).items()]
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()),
               OMP_NUM_THREADS='1')
    proc = subprocess.run(
        ['bash', osp.join(ROOT, 'tools/dist_train.sh'), args.config,
         str(DDP_PROCESSES), '--work-dir', osp.join(work_dir, 'two'),
         '--seed', str(SEED), '--cfg-options', *options,
         f'train_dataloader.batch_size={DDP_RANK_BATCH}'],
        env=env, cwd=work_dir, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ['no output']
        return 'FAIL', (f'tools/dist_train.sh exited with '
                        f'{proc.returncode}: {tail[0]}')
    two = load_checkpoint_file(
        osp.join(work_dir, 'two', f'iter_{DDP_ITERS}.pth'))['state_dict']
    ok, worst, key = compare(two, weights(single), **DDP_TOL[device])
    _, trained, _ = compare(weights(single), record.initial, 0, 0)
    ok &= trained > 0
    return ('PASS' if ok else 'FAIL'), (
        f'{DDP_PROCESSES} processes x batch {DDP_RANK_BATCH} vs 1 x '
        f'{DDP_PROCESSES * DDP_RANK_BATCH}, {DDP_ITERS} iterations: max '
        f'|dw| {worst:.2e} ({key}) [tolerance {DDP_TOL[device]}]; training '
        f'moved the weights by up to {trained:.2e}')


def check_resume(args, device):
    work_dir = osp.join(args.work_dir, f'resume_{device}')
    options = {'train_cfg.max_iters': RESUME_ITERS,
               'default_hooks.checkpoint.interval': RESUME_AT,
               'default_hooks.checkpoint.max_keep_ckpts': RESUME_ITERS}
    full, full_record = train(args.config, osp.join(work_dir, 'full'),
                              options)
    checkpoint = osp.join(work_dir, 'full', f'iter_{RESUME_AT}.pth')
    if args.drop_rng_state:
        state = load_checkpoint_file(checkpoint)
        state.pop('rng_state', None)
        checkpoint = osp.join(work_dir, 'no_rng_state.pth')
        save_checkpoint_atomic(state, checkpoint)
    resumed, record = train(args.config, osp.join(work_dir, 'resumed'),
                            options, resume=checkpoint)
    iterations = list(range(RESUME_AT + 1, RESUME_ITERS + 1))
    if sorted(record.losses) != iterations:
        return 'FAIL', (f'the resumed run trained iterations '
                        f'{sorted(record.losses)}, expected {iterations}')
    rtol = RESUME_LOSS_RTOL[device]
    loss_errors = [abs(record.losses[it][k] - v) / max(abs(v), 1e-30)
                   for it in iterations
                   for k, v in full_record.losses[it].items()]
    loss_error = max(loss_errors)
    equal_weights, worst, key = compare(weights(resumed), weights(full), 0, 0)
    ok = (all(error <= rtol for error in loss_errors)  # NaN fails
          and (equal_weights or device == 'cuda'))
    return ('PASS' if ok else 'FAIL'), (
        f'resumed at iteration {RESUME_AT} of {RESUME_ITERS}'
        f'{" without RNG states" if args.drop_rng_state else ""}: max '
        f'relative loss difference {loss_error:.2e} [tolerance {rtol:g}], '
        f'max |dw| {worst:.2e} ({key})'
        f'{"" if device == "cuda" else " [tolerance 0]"}')


def on_cpu_only(check):
    """Run ``check(args, 'cpu')`` with one intra-op thread (the thread
    count of the torchrun processes, which results compared bit for bit
    depend on; more threads only spin on a busy machine), unless CUDA is
    present."""
    def run(args):
        if torch.cuda.is_available():
            return 'SKIP', ('CUDA is present, so this process trains on the '
                            'GPU: the CUDA variant runs instead (the test '
                            'suite runs this CPU analogue)')
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return check(args, 'cpu')
        finally:
            torch.set_num_threads(threads)
    return run


def on_cuda(check, devices=1):
    def run(args):
        reason = need_cuda(devices)
        return ('SKIP', reason) if reason else check(args, 'cuda')
    return run


CHECKS = {
    'mamba-selective-scan': check_selective_scan,
    'mamba-causal-conv1d': check_causal_conv1d,
    'mamba-mixer': check_mixer,
    'amp-fp16-two-optimizers': check_amp,
    'ddp-gloo-cpu': on_cpu_only(check_ddp),
    'ddp-nccl-2gpu': on_cuda(check_ddp, devices=DDP_PROCESSES),
    'resume-rng-cpu': on_cpu_only(check_resume),
    'resume-rng-cuda': on_cuda(check_resume),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='GPU self-check: one PASS / FAIL / SKIP line per check; '
        'exit status 1 if any check fails')
    parser.add_argument('--checks', nargs='+', choices=list(CHECKS),
                        default=list(CHECKS), metavar='NAME',
                        help=f'checks to run (default: all): {list(CHECKS)}')
    parser.add_argument('--work-dir', help='where the runs write (default: '
                        'a temporary directory, removed at the end)')
    parser.add_argument('--config', default=TINY,
                        help='tokenizer config of the DDP and resume checks '
                        '(it needs dropout for the resume check)')
    parser.add_argument('--gan-config', default=TINY_GAN,
                        help='config with generator and discriminator '
                        'optimizers for the fp16 check')
    parser.add_argument('--drop-rng-state', action='store_true',
                        help='resume the resume-rng checks from a copy of '
                        'the checkpoint without its RNG states: they must '
                        'then FAIL (shows that they can)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Run the checks; returns the exit status (1 if any check failed)."""
    args = parse_args(argv)
    temporary = args.work_dir is None
    if temporary:
        args.work_dir = tempfile.mkdtemp(prefix='gpu_selfcheck_')
    failed = False
    try:
        for name in args.checks:
            try:
                status, message = CHECKS[name](args)
            except Exception as error:
                status = 'FAIL'
                message = f'{type(error).__name__}: {error}'
                traceback.print_exc()
            failed |= status == 'FAIL'
            print(f'{status} {name}: {" ".join(message.split())}', flush=True)
    finally:
        if temporary:
            shutil.rmtree(args.work_dir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
