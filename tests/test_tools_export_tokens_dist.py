"""tools/export_tokens.py with several processes (torchrun, gloo on CPU):
the export directory equals the one-process export file for file, and a
run in which one rank died resumes without loss, duplicates or recomputing
the verified shards. One torchrun launch runs every scenario: this file is
also its worker script (``python -m torch.distributed.run THIS_FILE
CONFIG CHECKPOINT ROOT``)."""
import hashlib
import json
import os
import os.path as osp
import runpy
import subprocess
import sys

if __name__ == '__main__':  # the torchrun worker: tests/ and the repo
    sys.path[:0] = [osp.dirname(osp.abspath(__file__)),
                    osp.dirname(osp.dirname(osp.abspath(__file__)))]

import pytest  # noqa: E402
import torch.distributed as torch_dist  # noqa: E402

from _helpers import (  # noqa: E402
    REPO_ROOT,
    free_port,
    subprocess_env,
    torch_threads,
)
from vistok.datasets import token_shards  # noqa: E402
from vistok.datasets.token_shards import TokenShardDataset  # noqa: E402

TOOL = osp.join(REPO_ROOT, 'tools/export_tokens.py')
TINY_CONFIG = osp.join(REPO_ROOT, 'tests/data/configs/tiny_vqvae.py')
NUM_IMAGES = 20
BATCH_SIZE = 4
#: name: (arguments, shard size) of each scenario. Shards of 6 give 4 (or,
#: with --hflip-pairs, 7) shards: both ranks write several. The train
#: pipeline of tiny_vqvae draws random crops and flips: the draws must
#: depend on the sample, not on the rank.
SCENARIOS = {
    'flat': (['--data', 'train', '--flat-sequence', '--hflip-pairs'], 6),
    'compact': (['--data', 'val', '--format', 'compact'], 6),
    # shards of 4: 0..4; rank 0 writes 0, 2, 4 and rank 1 writes 1, then
    # dies while writing 3
    'killed': (['--data', 'val'], 4),
}
KILLED_SHARD = 'tokens-000003.tar'
#: damaged on disk before the resume: rewritten, and shard 2 (listed after
#: it in the manifest) is kept through a shard record
DAMAGED_SHARD = 'tokens-000001.tar'


def export_args(config, checkpoint, out, extra, shard_size):
    return [config, checkpoint, '--out', str(out), '--shard-size',
            str(shard_size), '--batch-size', str(BATCH_SIZE), *extra,
            '--cfg-options',
            *[f'{data}_dataloader.dataset.num_samples={NUM_IMAGES}'
              for data in ('train', 'val')]]


def files_of(root):
    """``{relative path: (sha256, inode, mtime_ns)}`` of every file under
    ``root``."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = osp.join(folder, name)
            with open(path, 'rb') as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            stat = os.stat(path)
            found[osp.relpath(path, root)] = (digest, stat.st_ino,
                                              stat.st_mtime_ns)
    return found


def digests(files):
    return {name: value[0] for name, value in files.items()}


class Killed(Exception):
    """Rank 1 'dies' while writing a shard."""


def worker(config, checkpoint, root):
    """Every scenario on this rank (the process group of torchrun)."""
    from vistok.utils.dist import finalize_dist, get_rank, init_dist
    init_dist('pytorch', backend='gloo')
    rank = get_rank()
    main = runpy.run_path(TOOL)['main']
    for name in ('flat', 'compact'):
        extra, size = SCENARIOS[name]
        main(export_args(config, checkpoint, osp.join(root, 'two', name),
                         extra, size))

    extra, size = SCENARIOS['killed']
    args = export_args(config, checkpoint, osp.join(root, 'two', 'killed'),
                       extra, size)
    real_write = token_shards._write_bytes_atomic

    def die_on_shard(data, path):
        if osp.basename(path) == KILLED_SHARD:  # half a shard, then gone
            with open(path + token_shards.TMP_SUFFIX, 'wb') as f:
                f.write(data[:len(data) // 2])
            raise Killed(path)
        real_write(data, path)

    if rank == 1:
        token_shards._write_bytes_atomic = die_on_shard
    try:
        main(args)
        error = None
    except (Killed, RuntimeError) as err:
        error = f'{type(err).__name__}: {err}'
    token_shards._write_bytes_atomic = real_write
    if rank == 1:  # the barrier rank 0 waits at before it folds the records
        torch_dist.barrier()
    torch_dist.barrier()
    out = args[args.index('--out') + 1]
    if rank == 0:
        crashed = files_of(out)
        with open(osp.join(out, DAMAGED_SHARD), 'r+b') as f:
            f.seek(600)
            f.write(b'\xff')
    torch_dist.barrier()
    main(args)
    errors = [None, None]
    torch_dist.all_gather_object(errors, error)
    if rank == 0:
        with open(osp.join(root, 'killed.json'), 'w') as f:
            json.dump(dict(errors=errors, crashed=crashed,
                           resumed=files_of(out)), f)
    finalize_dist()


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
    from test_tools_export_tokens import make_tokenizer
    return make_tokenizer(tmp_path_factory.mktemp('tokenizer'), 'vq')


def test_two_ranks_export_what_one_does_and_resume_a_killed_rank(
        tmp_path, tokenizer):
    config, checkpoint = tokenizer
    main = runpy.run_path(TOOL)['main']
    with torch_threads(1):  # the thread count of the torchrun processes
        for name, (extra, size) in SCENARIOS.items():
            main(export_args(config, checkpoint, tmp_path / 'one' / name,
                             extra, size))
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node',
         '2', '--master_addr', '127.0.0.1', '--master_port',
         str(free_port()), osp.abspath(__file__), config, checkpoint,
         str(tmp_path)], env=subprocess_env(), capture_output=True,
        text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    # (a) every file the same bytes, nothing more (no shard records)
    flat = TokenShardDataset(str(tmp_path / 'two' / 'flat'), verify=True)
    assert len(flat) == 2 * NUM_IMAGES and flat.manifest['token_order']
    assert flat[1]['sample_idx'] == flat[0]['sample_idx'] == 0
    flat_manifest = flat.manifest
    for name in SCENARIOS:
        one = digests(files_of(tmp_path / 'one' / name))
        two = digests(files_of(tmp_path / 'two' / name))
        assert two == one, name
    assert sorted(one) == ['manifest.json'] + [
        f'tokens-{k:06d}.tar' for k in range(5)]
    assert all(set(shard) == {'name', 'start', 'stop', 'sha256'}
               for shard in flat_manifest['shards'])
    assert sorted(digests(files_of(tmp_path / 'two' / 'compact'))) == [
        'export.json', 'val-tokens.vtok']

    # (b) rank 1 died writing shard 3: rank 0 folded what was there
    with open(tmp_path / 'killed.json') as f:
        killed = json.load(f)
    assert killed['errors'][0].startswith('RuntimeError') and \
        KILLED_SHARD in killed['errors'][0]
    assert killed['errors'][1].startswith('Killed')
    crashed = killed['crashed']
    assert sorted(crashed) == [
        'manifest.json', 'tokens-000000.tar', 'tokens-000001.tar',
        'tokens-000002.tar', 'tokens-000003.tar.tmp', 'tokens-000004.tar',
        'tokens-000004.tar.json']
    manifest = json.loads(open(tmp_path / 'one' / 'killed' /
                               'manifest.json').read())
    reference = {s['name']: s['sha256'] for s in manifest['shards']}
    for name in ('tokens-000000.tar', 'tokens-000002.tar',
                 'tokens-000004.tar'):
        assert crashed[name][0] == reference[name]
    # resumed with shard 1 damaged: the same files as one process, shards
    # 0, 2 and 4 untouched (same inode and mtime), 1 and 3 written again
    resumed = killed['resumed']
    assert digests(resumed) == one
    for name in ('tokens-000000.tar', 'tokens-000002.tar',
                 'tokens-000004.tar'):
        assert resumed[name][1:] == crashed[name][1:], name
    for name in (DAMAGED_SHARD, ):
        assert resumed[name][1:] != crashed[name][1:], name
    dataset = TokenShardDataset(str(tmp_path / 'two' / 'killed'),
                                verify=True)
    assert [dataset[i]['sample_idx'] for i in range(len(dataset))] == list(
        range(NUM_IMAGES))


def test_dist_export_tokens_sh_runs_torchrun_on_the_tool():
    """The wrapper's command line (PYTHON=echo prints it instead of
    running it)."""
    proc = subprocess.run(
        ['bash', osp.join(REPO_ROOT, 'tools/dist_export_tokens.sh'), 'C.py',
         'K.pth', '3', '--data', 'train', '--out', 'D'],
        env=subprocess_env(PYTHON='echo', PORT=1234), capture_output=True,
        text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        '-m', 'torch.distributed.run', '--nnodes=1', '--node_rank=0',
        '--master_addr=127.0.0.1', '--master_port=1234',
        '--nproc_per_node=3', TOOL, 'C.py', 'K.pth', '--launcher',
        'pytorch', '--data', 'train', '--out', 'D']


if __name__ == '__main__':
    worker(*sys.argv[1:4])
