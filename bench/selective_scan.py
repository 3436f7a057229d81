"""Selective scan speed, memory and accuracy: vistok's chunked PyTorch scan
(its own backward) vs the per-timestep reference recurrence (mamba-ssm's
``selective_scan_ref`` algorithm, backward through autograd).

    python bench/selective_scan.py            # the issue's setting (minutes)
    python bench/selective_scan.py --length 1600 --dim 32 \\
        --reference-backward-lengths 200 400    # a quick look

Setting (defaults): batch 2, d_inner 128, d_state 16, length 6400,
``delta_softplus=True``, float32. Every case runs in its own subprocess,
which reports the median time over ``--repeats`` (the reference backward
runs once) and the peak resident memory the case added (``ru_maxrss`` after
the case minus before it, inputs already built). The reference backward costs
``a L + b L^2`` (per-step autograd nodes, plus a full-size ``(B, D, L, N)``
gradient for each step's slice of ``exp(ΔA)`` and ``ΔBu``), so it is timed
at the shorter ``--reference-backward-lengths`` and that model, fitted with
``a, b >= 0``, is extrapolated to ``--length``. Errors: max |vistok -
reference| / max |reference| with the reference in float64, for the output
at ``--length`` and for the gradients of all inputs at the longest
reference-backward length. Prints one JSON document. Run by hand; never in CI.
"""
import argparse
import json
import os.path as osp
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402

from vistok.models.backbones.mamba.selective_scan import (  # noqa: E402
    selective_scan,
    selective_scan_reference,
)

TARGETS = dict(forward_speedup=3.0, forward_backward_speedup=50.0,
               max_relative_error=1e-4)
GRAD_NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')


def make_inputs(batch, dim, d_state, length, dtype, seed=0):
    """Mamba-like inputs: A = -(1..N) per channel, Δ after softplus around
    the initial range of dt_proj's bias, B, C, u, z standard normal."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    inputs = dict(
        u=randn(batch, dim, length),
        delta=randn(batch, dim, length) * 0.5,
        A=-torch.arange(1, d_state + 1, dtype=torch.float64).repeat(dim, 1),
        B=randn(batch, d_state, length),
        C=randn(batch, d_state, length),
        D=torch.ones(dim, dtype=torch.float64),
        z=randn(batch, dim, length),
        delta_bias=torch.log(torch.expm1(
            torch.rand(dim, generator=g, dtype=torch.float64) * 0.099 +
            0.001)))
    return {k: v.to(dtype) for k, v in inputs.items()}


def scan_fn(impl):
    if impl == 'vistok':
        return selective_scan
    return selective_scan_reference


def run_case(args):
    """One measurement in this (sub)process; prints a JSON line."""
    inputs = make_inputs(args.batch, args.dim, args.d_state, args.length,
                         torch.float32)
    fn = scan_fn(args.impl)
    backward = args.case == 'forward_backward'
    for tensor in inputs.values():
        tensor.requires_grad_(backward)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        with torch.set_grad_enabled(backward):
            out = fn(**inputs, delta_softplus=True)
            if backward:
                out.backward(torch.ones_like(out))
        times.append(time.perf_counter() - start)
        del out
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(seconds=statistics.median(times),
                          peak_added_mb=(peak - before) / 1024)))


def relative_error(actual, expected):
    return ((actual.double() - expected).abs().max() /
            expected.abs().max()).item()


def errors(args, grad_length):
    """Output error at ``args.length`` and gradient errors at
    ``grad_length`` (vistok float32 vs reference float64)."""
    result = {}
    for length, with_grads in ((args.length, False), (grad_length, True)):
        inputs32 = make_inputs(args.batch, args.dim, args.d_state, length,
                               torch.float32)
        inputs64 = {k: v.double() for k, v in inputs32.items()}
        for inputs in (inputs32, inputs64):
            for tensor in inputs.values():
                tensor.requires_grad_(with_grads)
        with torch.set_grad_enabled(with_grads):
            out = selective_scan(**inputs32, delta_softplus=True)
            ref = selective_scan_reference(**inputs64, delta_softplus=True)
        if not with_grads:
            result[f'output_L{length}'] = relative_error(out, ref)
            continue
        grad_out = torch.randn(ref.shape, dtype=torch.float64)
        grads = torch.autograd.grad(out, list(inputs32.values()),
                                    grad_out.float())
        ref_grads = torch.autograd.grad(ref, list(inputs64.values()),
                                        grad_out)
        for name, grad, ref_grad in zip(inputs32, grads, ref_grads):
            result[f'grad_{name}_L{length}'] = relative_error(grad, ref_grad)
    return result


def fit_linear_quadratic(lengths, seconds):
    """Least-squares ``(a, b) >= 0`` of ``t = a L + b L^2``."""
    lengths = torch.tensor(lengths, dtype=torch.float64)
    seconds = torch.tensor(seconds, dtype=torch.float64).unsqueeze(1)
    design = torch.stack([lengths, lengths**2], dim=1)
    candidates = [torch.linalg.lstsq(design, seconds).solution.squeeze(1)]
    for column in range(2):  # one term only, when the joint fit is negative
        single = torch.zeros(2, dtype=torch.float64)
        single[column] = torch.linalg.lstsq(design[:, column:column + 1],
                                            seconds).solution.item()
        candidates.append(single)
    feasible = [c for c in candidates if (c >= 0).all()]
    best = min(feasible,
               key=lambda c: ((design @ c - seconds.squeeze(1))**2).sum())
    return best.tolist()


def subprocess_case(args, impl, case, length, repeats):
    command = [
        sys.executable,
        osp.abspath(__file__), '--run-case', case, '--impl', impl,
        '--length',
        str(length), '--repeats',
        str(repeats), '--batch',
        str(args.batch), '--dim',
        str(args.dim), '--d-state',
        str(args.d_state)
    ]
    output = subprocess.run(
        command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--dim', type=int, default=128)
    parser.add_argument('--d-state', type=int, default=16)
    parser.add_argument('--length', type=int, default=6400)
    parser.add_argument(
        '--reference-backward-lengths', type=int, nargs='+',
        default=[400, 800, 1600])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--run-case', dest='case',
                        choices=['forward', 'forward_backward'])
    parser.add_argument('--impl', choices=['vistok', 'reference'])
    args = parser.parse_args()
    if len(set(args.reference_backward_lengths)) < 2:
        parser.error('--reference-backward-lengths needs two or more '
                     'distinct lengths (the fit has two coefficients)')
    if args.case:
        run_case(args)
        return

    L = args.length
    cases = {
        'vistok_forward': subprocess_case(args, 'vistok', 'forward', L,
                                          args.repeats),
        'reference_forward': subprocess_case(args, 'reference', 'forward',
                                             L, args.repeats),
        'vistok_forward_backward': subprocess_case(
            args, 'vistok', 'forward_backward', L, args.repeats),
    }
    short = sorted(args.reference_backward_lengths)
    for length in short:
        cases[f'reference_forward_backward_L{length}'] = subprocess_case(
            args, 'reference', 'forward_backward', length, 1)
    measured = [cases[f'reference_forward_backward_L{n}']['seconds']
                for n in short]
    linear, quadratic = fit_linear_quadratic(short, measured)
    reference_fwd_bwd = linear * L + quadratic * L**2
    result = dict(
        setting=dict(batch=args.batch, d_inner=args.dim,
                     d_state=args.d_state, length=L, delta_softplus=True,
                     dtype='float32', threads=torch.get_num_threads()),
        cases=cases,
        reference_forward_backward_extrapolated=dict(
            seconds=reference_fwd_bwd, seconds_per_step=linear,
            seconds_per_step_squared=quadratic, from_lengths=short),
        forward_speedup=(cases['reference_forward']['seconds'] /
                         cases['vistok_forward']['seconds']),
        forward_backward_speedup=(
            reference_fwd_bwd / cases['vistok_forward_backward']['seconds']),
        forward_backward_speedup_at_measured_length=(
            measured[-1] / subprocess_case(args, 'vistok',
                                           'forward_backward', short[-1],
                                           args.repeats)['seconds']),
        relative_errors=errors(args, short[-1]),
        targets=TARGETS)
    result['max_relative_error'] = max(result['relative_errors'].values())
    result['meets_targets'] = dict(
        forward_speedup=result['forward_speedup'] >=
        TARGETS['forward_speedup'],
        forward_backward_speedup=result['forward_backward_speedup'] >=
        TARGETS['forward_backward_speedup'],
        max_relative_error=result['max_relative_error'] <=
        TARGETS['max_relative_error'])
    print(json.dumps(result, indent=2))


if __name__ == '__main__':
    main()
