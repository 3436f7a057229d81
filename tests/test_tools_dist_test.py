"""tools/dist_test.sh with 2 CPU processes (gloo) gives the metrics of
tools/test.py in one process, on a test set whose size is not a multiple of
2 processes x batch: mmengine's ``DefaultSampler`` pads each rank to the
same length by repeating the first samples, and ``collect_results``
interleaves the ranks' results back into dataset order and cuts the padding.
"""
import ast
import os.path as osp
import re
import runpy
import subprocess
import sys

import mmengine
import pytest
import torch

from _helpers import REPO_ROOT, free_port, subprocess_env, torch_threads
from vistok.apis import load_tokenizer
from vistok.utils.checkpoint import save_checkpoint_atomic

TINY = osp.join(REPO_ROOT, 'tests/data/configs/tiny_vqvae.py')
NUM_SAMPLES = 13  # 2 ranks x batch 4 = 8 does not divide it: rank 1 pads
BATCH = 4
OPTIONS = [f'test_dataloader.dataset.num_samples={NUM_SAMPLES}',
           f'test_dataloader.batch_size={BATCH}']
#: metrics that are functions of the token ids alone (CodebookUsage sums
#: integer histograms): equal ids give identical values
EXACT = ('usage', 'perplexity', 'entropy')
#: pred_img is on [0, 255]. Only the last image differs (measured 5e-4,
#: 2e-6 of the range; the others are bit-identical): one process runs it
#: alone, rank 0 in a batch of 3, and the CPU conv kernels' blocking
#: depends on the batch size, so float32 rounding differs and grows through
#: the network. 1e-5 of the range bounds this with a 5x margin.
PIXEL_ATOL = 255 * 1e-5
#: PSNR (float64 mean of per-image values) inherits that: measured 2e-10
#: relative; the padded duplicate of image 0 counted in the mean would move
#: it by 6e-3.
PSNR_RTOL = 1e-6


@pytest.fixture(scope='module')
def random_checkpoint(tmp_path_factory):
    """The tiny tokenizer as initialised (no training: the test is about
    the evaluation, not the weights), saved as a checkpoint."""
    torch.manual_seed(0)
    model = load_tokenizer(TINY)
    path = str(tmp_path_factory.mktemp('ckpt') / 'random.pth')
    save_checkpoint_atomic(dict(state_dict=model.state_dict(), meta={}),
                           path)
    return path


def test_dist_test_two_cpu_processes_match_one(tmp_path, random_checkpoint):
    tool = runpy.run_path(osp.join(REPO_ROOT, 'tools/test.py'))
    with torch_threads(1):  # the thread count of the torchrun processes
        one = tool['main']([TINY, random_checkpoint, '--work-dir',
                            str(tmp_path / 'one'), '--out',
                            str(tmp_path / 'one.pkl'), '--cfg-options',
                            *OPTIONS])
    # cwd: mmengine's collect_results gathers the ranks' parts in
    # ./.dist_test
    proc = subprocess.run(
        ['bash', osp.join(REPO_ROOT, 'tools/dist_test.sh'), TINY,
         random_checkpoint, '2', '--work-dir', str(tmp_path / 'two'),
         '--out', str(tmp_path / 'two.pkl'), '--cfg-options', *OPTIONS],
        env=subprocess_env(PYTHON=sys.executable, PORT=free_port()),
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = open(next((tmp_path / 'two').glob('*/*.log'))).read()
    assert 'Distributed training: True' in log and 'GPU number: 2' in log

    # every sample once, in dataset order: the padding is dropped
    single = mmengine.load(tmp_path / 'one.pkl')
    ranks = mmengine.load(tmp_path / 'two.pkl')
    expected_order = list(range(NUM_SAMPLES))
    assert [s['sample_idx'] for s in single] == expected_order
    assert [s['sample_idx'] for s in ranks] == expected_order
    for a, b in zip(single, ranks):
        assert torch.equal(a['tokens'], b['tokens']), a['sample_idx']
        torch.testing.assert_close(b['pred_img'], a['pred_img'], rtol=0,
                                   atol=PIXEL_ATOL)

    # the metrics dict the tool prints on every rank (the two ranks' writes
    # to the shared stdout may interleave on one line)
    printed = re.findall(r"\{'psnr'[^{}]*\}", proc.stdout)
    assert len(printed) == 2, proc.stdout[-2000:]  # one dict per rank
    two = ast.literal_eval(printed[0])
    assert ast.literal_eval(printed[1]) == two
    assert set(two) == set(one) == {'psnr', *EXACT}
    for key in EXACT:
        assert two[key] == float(one[key]), key
    assert two['psnr'] == pytest.approx(float(one['psnr']), rel=PSNR_RTOL)
