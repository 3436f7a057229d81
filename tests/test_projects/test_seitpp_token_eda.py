"""SeiT++ dataset tooling: the synonym dictionary (a brute-force top-k with
the tie rule, byte-identical rebuilds) and the Token-EDA transforms
(ReplaceSynonym, SwapCode, TokenEDA) with their per-sample probabilities,
bounded retries and seeded draws through a token dataset."""
import json
import os.path as osp
import runpy

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from _helpers import REPO_ROOT
from projects.SeiTpp.seitpp.synonyms import (
    build_synonyms,
    load_synonyms,
    write_synonyms,
)
from projects.SeiTpp.seitpp.transforms import (
    ReplaceSynonym,
    SwapCode,
    TokenEDA,
)
from vistok.datasets import SeededIndex, SeiTTokenDataset, write_seit
from vistok.utils.rng import seeded_rng

TOOL = osp.join(REPO_ROOT, 'projects/SeiTpp/tools/build_synonyms.py')


# --- synonym dictionary -----------------------------------------------------
def _tied_codebook():
    """A random codebook with deliberate cosine ties: exact duplicates,
    power-of-two multiples (same direction, exactly the same cosine) and a
    zero vector (cosine 0 with everything)."""
    rng = np.random.default_rng(0)
    codebook = rng.standard_normal((40, 6))
    codebook[17] = codebook[5]
    codebook[30] = codebook[5]
    codebook[9] = 2.0 * codebook[3]
    codebook[2] = 0.5 * codebook[36]
    codebook[11] = 0.0
    return codebook


def _brute_force(codebook, top_k):
    """Full cosine matrix (torch, float64), self excluded, then each row
    sorted by (-similarity, index) in plain Python."""
    x = torch.from_numpy(codebook)
    sim = torch.nn.functional.cosine_similarity(
        x[:, None, :], x[None, :, :], dim=-1).numpy()
    num = len(codebook)
    return [sorted((j for j in range(num) if j != i),
                   key=lambda j: (-sim[i, j], j))[:top_k]
            for i in range(num)]


def test_synonyms_equal_brute_force_topk_with_ties():
    codebook = _tied_codebook()
    table = build_synonyms(codebook, top_k=7)
    assert table.dtype == np.int64 and table.shape == (40, 7)
    assert table.tolist() == _brute_force(codebook, 7)
    # the ties are really there: duplicates list each other first, lower
    # index first; the zero vector's synonyms are the lowest other indices
    assert table[5, :2].tolist() == [17, 30]
    assert table[17, :2].tolist() == [5, 30]
    assert table[3, 0] == 9 and table[36, 0] == 2
    assert table[11].tolist() == [0, 1, 2, 3, 4, 5, 6]
    # a float32 tensor is accepted (and computed in float64)
    single = codebook.astype(np.float32)
    assert build_synonyms(torch.from_numpy(single), top_k=7).tolist() == \
        _brute_force(single.astype(np.float64), 7)


def test_tool_rebuilds_byte_identical_json(tmp_path, capsys):
    codebook = _tied_codebook()
    torch.save(torch.from_numpy(codebook).float(), tmp_path / 'codebook.ckpt')
    np.save(tmp_path / 'codebook.npy', codebook.astype(np.float32))
    main = runpy.run_path(TOOL)['main']
    first = main([str(tmp_path / 'codebook.ckpt'), str(tmp_path / 'a.json'),
                  '--top-k', '5'])
    main([str(tmp_path / 'codebook.npy'), str(tmp_path / 'b.json'),
          '--top-k', '5'])
    main([str(tmp_path / 'codebook.ckpt'), str(tmp_path / 'a.json'),
          '--top-k', '5'])  # rebuilt in place
    data = (tmp_path / 'a.json').read_bytes()
    assert data == (tmp_path / 'b.json').read_bytes()
    assert first['num_codes'] == 40 and first['top_k'] == 5
    assert json.loads(capsys.readouterr().out.splitlines()[0]) == first
    # the layout: string keys, sorted, compact, one trailing newline
    mapping = json.loads(data)
    assert list(mapping) == sorted(str(c) for c in range(40))
    assert data.endswith(b']}\n') and b' ' not in data
    expected = _brute_force(codebook.astype(np.float32).astype(np.float64),
                            5)
    assert [mapping[str(c)] for c in range(40)] == expected
    assert np.array_equal(load_synonyms(str(tmp_path / 'a.json'), 5),
                          np.array(expected))
    assert not list(tmp_path.glob('*.tmp'))


def test_bad_synonym_input_is_named(tmp_path):
    with pytest.raises(ValueError, match='top_k must be an int in'):
        build_synonyms(np.ones((4, 2)), top_k=4)
    with pytest.raises(ValueError, match=r'shape \(4,\)'):
        build_synonyms(np.ones(4))
    with pytest.raises(ValueError, match='code 1 lists'):
        load_synonyms({'0': [1, 2], '1': [0]}, top_k=2)
    with pytest.raises(ValueError, match=r'missing \[1\]'):
        load_synonyms({'0': [1], '2': [0]}, top_k=1)
    with pytest.raises(ValueError, match='code 0 lists'):
        load_synonyms({'0': [1, 5], '1': [0, 0]}, top_k=2)
    with pytest.raises(FileNotFoundError, match='synonyms='):
        load_synonyms(str(tmp_path / 'none.json'))


# --- ReplaceSynonym ---------------------------------------------------------
NUM_CODES, TOP_K = 20, 3


def _synonym_dict():
    """Each code's list: 6 other codes (only the first TOP_K may be used)."""
    rng = np.random.default_rng(1)
    return {str(c): [int(s) for s in rng.permutation(
        [k for k in range(NUM_CODES) if k != c])[:6]]
        for c in range(NUM_CODES)}


def _run(transform, indices, seed):
    with seeded_rng(seed):
        return transform(dict(indices=indices))['indices']


def test_replace_synonym_uses_only_top_k_at_token_prob():
    synonyms = _synonym_dict()
    table = np.array([synonyms[str(c)] for c in range(NUM_CODES)])
    transform = ReplaceSynonym(synonyms, prob=1.0, token_prob=0.3,
                               top_k=TOP_K)
    rng = np.random.default_rng(2)
    replaced = total = 0
    rank_counts = np.zeros(TOP_K)
    for seed in range(20):
        codes = torch.from_numpy(rng.integers(0, NUM_CODES, (64, 64)))
        out = _run(transform, codes, seed)
        assert out.dtype == torch.int64 and out.shape == (64, 64)
        src, new = codes.numpy().ravel(), out.numpy().ravel()
        changed = src != new
        # every new code is one of its original code's first TOP_K
        ranks = (table[src[changed], :TOP_K] == new[changed, None])
        assert ranks.any(axis=1).all()
        rank_counts += ranks.sum(axis=0)
        replaced += changed.sum()
        total += src.size
    # ~token_prob of the tokens (81920 tokens: 6 sigma ~ 0.01), uniform
    # over the TOP_K ranks
    assert abs(replaced / total - 0.3) < 0.01
    assert np.all(np.abs(rank_counts / replaced - 1 / TOP_K) < 0.02)


def test_replace_synonym_probabilities_and_types():
    synonyms = _synonym_dict()
    codes = np.random.default_rng(3).integers(0, NUM_CODES, (4, 4))
    for kwargs in (dict(prob=0.0, token_prob=1.0),
                   dict(prob=1.0, token_prob=0.0)):
        transform = ReplaceSynonym(synonyms, top_k=TOP_K, **kwargs)
        for seed in range(50):
            assert np.array_equal(_run(transform, codes, seed), codes)
    # one per-sample probability: ~40% of the samples change
    transform = ReplaceSynonym(synonyms, prob=0.4, token_prob=0.5,
                               top_k=TOP_K)
    fired = [not np.array_equal(_run(transform, codes, s), codes)
             for s in range(500)]
    assert abs(np.mean(fired) - 0.4) < 0.07
    # numpy in, numpy of the same dtype out; the input is not modified
    small = codes.astype(np.uint16)
    keep = small.copy()
    out = _run(ReplaceSynonym(synonyms, prob=1.0, token_prob=1.0,
                              top_k=TOP_K), small, 0)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint16
    assert np.array_equal(small, keep) and not np.array_equal(out, small)
    with pytest.raises(ValueError, match=r'codes in \[0, 20\]'):
        _run(transform, np.array([[0, NUM_CODES]]), 0)


# --- SwapCode ---------------------------------------------------------------
def test_swap_code_on_a_tiny_grid_returns_and_keeps_the_codes(monkeypatch):
    calls = []
    randint = np.random.randint
    monkeypatch.setattr(np.random, 'randint',
                        lambda *a, **k: calls.append(1) or randint(*a, **k))
    grid = torch.tensor([[0, 1], [2, 3]])
    transform = SwapCode(prob=1.0, max_scale=1.0, num_swaps=3, max_tries=4)
    outcomes = set()
    for seed in range(200):
        out = _run(transform, grid, seed)
        assert sorted(out.ravel().tolist()) == [0, 1, 2, 3]
        outcomes.add(tuple(out.ravel().tolist()))
    assert len(outcomes) > 4  # swaps do happen
    # at most 2 randint calls per try, max_tries per swap
    assert len(calls) <= 200 * 3 * 2 * 4
    # sides that leave no room for two squares (3x3 grid, side 2) return
    grid3 = np.arange(9).reshape(3, 3)
    for seed in range(50):
        out = _run(SwapCode(prob=1.0, max_scale=1.0, max_tries=1), grid3,
                   seed)
        assert sorted(out.ravel().tolist()) == list(range(9))


def _swap_regions(before, after):
    """(side, displacement) of a swap of two disjoint squares read off a
    grid of unique codes, or None when nothing moved; fails otherwise."""
    where = {int(c): divmod(k, before.shape[1])
             for k, c in enumerate(before.ravel())}
    moved = np.argwhere(before != after)
    if moved.size == 0:
        return None
    shift = {tuple(np.subtract(where[int(after[y, x])], (y, x)))
             for y, x in moved}
    assert len(shift) == 2, shift
    d = next(iter(shift))
    assert shift == {d, tuple(-v for v in d)}
    side = int(round(np.sqrt(len(moved) / 2)))
    assert len(moved) == 2 * side * side
    assert max(abs(v) for v in d) >= side  # disjoint squares
    return side, d


def test_swap_code_swaps_two_disjoint_squares_and_honours_num_swaps():
    grid = np.arange(32 * 32).reshape(32, 32)
    sides = []
    for seed in range(200):
        out = _run(SwapCode(prob=1.0), grid, seed)
        swap = _swap_regions(grid, out)
        sides.append(0 if swap is None else swap[0])
    # side = floor(32 * U(0, 0.25)): every value 0..7, nothing larger
    assert set(sides) == set(range(8))
    one = np.mean([(_run(SwapCode(prob=1.0), grid, s) != grid).sum()
                   for s in range(100)])
    three = np.mean([(_run(SwapCode(prob=1.0, num_swaps=3), grid, s)
                      != grid).sum() for s in range(100)])
    assert three > 2 * one
    never = SwapCode(prob=0.0, max_scale=1.0)
    assert all(np.array_equal(_run(never, grid, s), grid) for s in range(20))
    with pytest.raises(ValueError, match=r'shape \(h, w\), got \(1, 2, 2\)'):
        _run(SwapCode(), torch.zeros(1, 2, 2, dtype=torch.long), 0)
    with pytest.raises(ValueError, match='max_tries must be an int >= 1'):
        SwapCode(max_tries=0)


# --- TokenEDA ---------------------------------------------------------------
def test_token_eda_picks_exactly_one_branch_at_its_probability():
    eda = TokenEDA(_synonym_dict(), synonym_prob=0.25, swap_prob=0.25,
                   top_k=TOP_K)
    picked = []
    eda.replace = lambda r: picked.append('synonym') or r
    eda.swap = lambda r: picked.append('swap') or r
    with seeded_rng(0):  # one stream of 2000 samples' draws
        for _ in range(2000):
            before = len(picked)
            eda(dict(indices=np.zeros((2, 2), dtype=np.int64)))
            assert len(picked) - before <= 1
    share = {k: picked.count(k) / 2000 for k in ('synonym', 'swap')}
    assert abs(share['synonym'] - 0.25) < 0.04
    assert abs(share['swap'] - 0.25) < 0.04
    # without synonyms the synonym branch must be off
    TokenEDA(None, synonym_prob=0.0, swap_prob=0.5)
    with pytest.raises(ValueError, match='needs synonyms'):
        TokenEDA(None)
    with pytest.raises(ValueError, match='synonym_prob \\+ swap_prob'):
        TokenEDA(_synonym_dict(), synonym_prob=0.6, swap_prob=0.5,
                 top_k=TOP_K)


def test_token_eda_in_a_dataset_pipeline_is_seeded_per_draw(tmp_path):
    synonyms = tmp_path / 'synonyms.json'
    codebook = np.random.default_rng(4).standard_normal((NUM_CODES, 4))
    write_synonyms(build_synonyms(codebook, top_k=TOP_K), synonyms)
    grids = [np.random.default_rng(k).integers(0, NUM_CODES, (8, 8))
             for k in range(6)]
    token_file = str(tmp_path / 'x-token.data.bin.gz')
    write_seit(token_file, grids)
    pipeline = [dict(type='TokenEDA', synonyms=str(synonyms),
                     synonym_prob=0.5, swap_prob=0.5, top_k=TOP_K,
                     max_scale=0.5)]
    dataset = SeiTTokenDataset(token_file, grid=(8, 8), pipeline=pipeline)
    draws = [SeededIndex(k % 6, 100 + k) for k in range(12)]
    direct = [dataset[d] for d in draws]
    again = [dataset[d] for d in draws]
    loader = DataLoader(dataset, batch_size=None, sampler=draws,
                        num_workers=2)
    changed = 0
    for a, b, c, d in zip(direct, again, loader, draws):
        assert set(a) == {'indices', 'sample_idx'}
        assert a['indices'].dtype == torch.int64
        assert a['indices'].shape == (8, 8)
        assert a['sample_idx'] == int(d) and type(a['sample_idx']) is int
        assert torch.equal(a['indices'], b['indices'])
        assert torch.equal(a['indices'], c['indices'])
        changed += not torch.equal(a['indices'],
                                   torch.from_numpy(grids[int(d)]))
    assert changed >= 8  # every draw augments (a swap may draw side 0)
    other = [dataset[SeededIndex(int(d), d.seed + 1)]['indices']
             for d in draws]
    assert any(not torch.equal(a['indices'], o)
               for a, o in zip(direct, other))
