"""Quantizer speed and memory, vistok vs vector-quantize-pytorch (the peer).

    python bench/quantizers.py [--cases vq_cosine lfq_14 ...] [--repeats 3]

Prints one JSON document: for every case and implementation, the median
forward+backward time in train mode and the peak resident memory the case
added, each measured in its own subprocess (the peer's VQ case alone needs
~17 GB). For the VQ case it also reports this machine's throughput for the
distance GEMM on the same shapes, blocked into a reused buffer and as one
whole ``N x K`` product, and ``search_vs_gemm`` = GEMM time / search time
(target >= 0.8). Peer: ``pip install -r requirements/bench.txt``.
Run by hand; never in CI.
"""
import argparse
import json
import os
import os.path as osp
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402

# name: (vistok config, peer constructor, peer kwargs, batch, tokens, channels)
CASES = {
    'vq_cosine': dict(
        vistok=dict(type='VectorQuantizer', codebook_size=16384, embed_dim=32,
                    use_l2_norm=True),
        peer=('VectorQuantize', dict(dim=32, codebook_size=16384,
                                     use_cosine_sim=True)),
        shape=(16, 4096, 32)),
    'lfq_14': dict(
        vistok=dict(type='LookupFreeQuantizer', codebook_bits=14,
                    entropy_weight=0.1),
        peer=('LFQ', dict(dim=14, codebook_size=2**14,
                          entropy_loss_weight=0.1)),
        shape=(4, 4096, 14)),
    'lfq_18': dict(
        vistok=dict(type='LookupFreeQuantizer', codebook_bits=18,
                    entropy_weight=0.1),
        peer=('LFQ', dict(dim=18, codebook_size=2**18,
                          entropy_loss_weight=0.1)),
        shape=(4, 4096, 18), peer_shape=(1, 1024, 18)),
    'residual_vq_4': dict(
        vistok=dict(type='ResidualQuantizer', depth=4,
                    quantizer=dict(type='VectorQuantizer', codebook_size=1024,
                                   embed_dim=32)),
        peer=('ResidualVQ', dict(dim=32, num_quantizers=4,
                                 codebook_size=1024)),
        shape=(4, 4096, 32)),
    'fsq_888555': dict(
        vistok=dict(type='FiniteScalarQuantizer', levels=[8, 8, 8, 5, 5, 5]),
        peer=('FSQ', dict(levels=[8, 8, 8, 5, 5, 5])),
        shape=(16, 4096, 6)),
}


def rss_mb() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(case, impl):
    spec = CASES[case]
    if impl == 'vistok':
        import vistok.models  # noqa: F401
        from vistok.registry import QUANTIZERS
        module = QUANTIZERS.build(spec['vistok'])
        b, n, c = spec['shape']
        return module, torch.randn(b, c, n), lambda out: out.quantized, \
            lambda out: sum(out.loss.values()) if out.loss else 0.0
    import vector_quantize_pytorch as peer
    name, kwargs = spec['peer']
    module = getattr(peer, name)(**kwargs)
    b, n, c = spec.get('peer_shape', spec['shape'])
    return module, torch.randn(b, n, c), lambda out: out[0], \
        lambda out: out[-1].sum() if torch.is_tensor(out[-1]) else 0.0


def run_case(case, impl, repeats):
    torch.manual_seed(0)
    module, x, quantized_of, loss_of = build(case, impl)
    module.train()
    x.requires_grad_(True)
    base = rss_mb()
    times = []
    # the first run warms up; fast cases repeat until 0.5 s are measured
    while len(times) <= repeats or sum(times[1:]) < 0.5:
        start = time.perf_counter()
        out = module(x)
        total = quantized_of(out).square().mean() + loss_of(out)
        total.backward()
        times.append(time.perf_counter() - start)
        x.grad = None
        module.zero_grad(set_to_none=True)
    result = dict(case=case, impl=impl, input=list(x.shape),
                  seconds=statistics.median(times[1:]),
                  peak_extra_mb=round(peak_rss_mb() - base, 1))
    if case == 'vq_cosine' and impl == 'vistok':
        result.update(gemm_reference(x.shape, CASES[case]['vistok']))
    return result


def gemm_reference(shape, cfg):
    """Time of the distance GEMM (N x D) @ (D x K) alone (in row blocks
    writing into one reused output buffer, so memory stays bounded), and the
    search time of vistok's encode on the same vectors."""
    from vistok.registry import QUANTIZERS
    b, c, n = shape
    rows, k = b * n, cfg['codebook_size']
    a, codes = torch.randn(rows, c), torch.randn(k, c)
    block = 2048
    out = torch.empty(block, k)
    start = time.perf_counter()
    for i in range(0, rows, block):
        torch.mm(a[i:i + block], codes.T, out=out)
    gemm = time.perf_counter() - start
    start = time.perf_counter()
    full = a @ codes.T  # the whole N x K product at once (4 GB here)
    full_gemm = time.perf_counter() - start
    del full
    quantizer = QUANTIZERS.build(cfg).eval()
    z = torch.randn(shape)
    with torch.no_grad():
        quantizer.encode(z)
        start = time.perf_counter()
        quantizer.encode(z)
    search = time.perf_counter() - start
    flop = 2 * rows * k * c
    return dict(gemm_seconds=gemm, gemm_gflops=flop / gemm / 1e9,
                full_gemm_seconds=full_gemm,
                full_gemm_gflops=flop / full_gemm / 1e9,
                search_seconds=search, search_vs_gemm=gemm / search,
                search_vs_full_gemm=full_gemm / search)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cases', nargs='+', default=list(CASES))
    parser.add_argument('--impls', nargs='+', default=['vistok', 'peer'])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--child', nargs=2, metavar=('CASE', 'IMPL'),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(*args.child, args.repeats)))
        return
    results = []
    for case in args.cases:
        for impl in args.impls:
            proc = subprocess.run(
                [sys.executable, __file__, '--child', case, impl,
                 '--repeats', str(args.repeats)],
                capture_output=True, text=True)
            if proc.returncode:
                results.append(dict(case=case, impl=impl,
                                    error=proc.stderr.strip()[-500:]))
            else:
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(json.dumps(dict(torch=torch.__version__,
                          threads=torch.get_num_threads(), results=results),
                     indent=1))


if __name__ == '__main__':
    main()
