"""Two gloo processes (CPU) with different data end with identical
codebooks after EMA updates, k-means init and dead-code restarts; the EMA
update over two ranks equals one process on the concatenated batch."""
import datetime
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vistok.models.quantizers.vq import VectorQuantizer

WORLD_SIZE = 2
CODES, DIM, BATCH, STEPS = 16, 4, 48, 6
OPTIONS = {
    'ema_restart': dict(ema_decay=0.9, restart_threshold=1.0),
    'kmeans_restart': dict(kmeans_init=True, restart_threshold=1.0),
    'ema': dict(ema_decay=0.9),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def build(name):
    torch.manual_seed(0)  # the same initial codebook on every rank
    quantizer = VectorQuantizer(CODES, DIM, **OPTIONS[name]).train()
    if name == 'ema_restart':  # collapsed: all but one code dead
        far = 100 + torch.randn(CODES - 1, DIM)
        quantizer.set_codes(torch.cat([torch.zeros(1, DIM), far]))
    return quantizer


def batch(rank, step):
    """Different data on every rank; the last positions of rank 1 padded."""
    generator = torch.Generator().manual_seed(100 * rank + step)
    z = torch.randn(1, DIM, BATCH, generator=generator) + 3 * rank
    mask = torch.ones(1, BATCH, dtype=torch.bool)
    mask[:, BATCH - 8 * rank:] = False
    return z, mask


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}',
                            rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(1000 + rank)  # ranks draw different random numbers
        result = {}
        for name in OPTIONS:
            quantizer = build(name)
            restarted = 0.
            for step in range(STEPS):
                out = quantizer(*batch(rank, step))
                restarted += out.stats.get('restarted_codes', 0.)
            result[name] = dict(state=quantizer.state_dict(),
                                restarted=float(restarted))
        torch.save(result, f'{out_dir}/rank{rank}.pt')
    finally:
        dist.destroy_process_group()


def test_two_ranks_keep_identical_codebooks(tmp_path):
    # fork: the workers inherit the imported modules (spawn re-imports torch)
    mp.start_processes(_worker, args=(free_port(), str(tmp_path)),
                       nprocs=WORLD_SIZE, start_method='fork')
    ranks = [torch.load(tmp_path / f'rank{rank}.pt') for rank in (0, 1)]
    for name in OPTIONS:
        states = [result[name]['state'] for result in ranks]
        assert states[0].keys() == states[1].keys()
        for key, value in states[0].items():
            assert torch.equal(value, states[1][key]), f'{name}: {key}'
    assert ranks[0]['ema_restart']['restarted'] > 0
    assert ranks[0]['kmeans_restart']['state']['kmeans_initialized']
    assert not torch.equal(ranks[0]['ema']['state']['codebook'],
                           build('ema').codebook)

    # two ranks of EMA statistics = one process on the joined batch
    single = build('ema')
    for step in range(STEPS):
        inputs = [batch(rank, step) for rank in range(WORLD_SIZE)]
        single(torch.cat([z for z, _ in inputs], -1),
               torch.cat([mask for _, mask in inputs], -1))
    for key, value in single.state_dict().items():
        torch.testing.assert_close(ranks[0]['ema']['state'][key], value)
