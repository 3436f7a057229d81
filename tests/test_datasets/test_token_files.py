"""SeiTTokenDataset / CompactTokenDataset: the same samples as
TokenShardDataset for the same tokens, and the class-list and
class-balanced subsets exactly as documented in token_files.py."""
import pickle
import re
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vistok.datasets import (
    CompactTokenDataset,
    SeiTTokenDataset,
    TokenShardDataset,
    select_images,
    write_compact,
    write_seit,
)
from vistok.datasets.token_shards import (
    IDENTITY_KEYS,
    TokenShardWriter,
    index_dtype,
)
from vistok.registry import DATASETS

CODEBOOK = 510  # the SeiT format's full range, escapes included
GRID = (4, 4)
# labels in a shuffled order, so "file order" and "class order" differ
LABELS = [3, 0, 1, 3, 2, 4, 0, 1, 3, 2, 4, 0, 3, 1]
NAMES = ['n_apple', 'n_bear', 'n_cat', 'n_dog', 'n_eel']  # class k = line k


def _grids(n=len(LABELS), shape=GRID, high=CODEBOOK, seed=0):
    rng = np.random.default_rng(seed)
    grids = [rng.integers(0, high, size=shape) for _ in range(n)]
    grids[0].flat[:3] = [254, 255, high - 1]  # both sides of the escape
    return grids


def _write_wds(out, levels, structure, labels=None, sample_idx=None,
               codebook_size=CODEBOOK):
    """The reference: the same tokens as a webdataset token export."""
    identity = dict(config_sha256='c' * 64, checkpoint_sha256='k' * 64,
                    dataset_sha256='d' * 64, data='train', seed=0,
                    num_samples=len(levels), shard_size=4,
                    codebook_size=codebook_size,
                    dtype=index_dtype(codebook_size).name)
    assert set(identity) == set(IDENTITY_KEYS)
    writer = TokenShardWriter(str(out), identity)
    for shard_id, start, stop in list(writer.pending_shards()):
        samples = []
        for i in range(start, stop):
            sample = dict(levels=levels[i], position=i)
            if labels is not None:
                sample['gt_label'] = labels[i]
            if sample_idx is not None:
                sample['sample_idx'] = sample_idx[i]
            samples.append(sample)
        writer.write_shard(shard_id, structure, samples)
    return TokenShardDataset(str(out))


def _assert_same_sample(got, expected):
    assert set(got) == set(expected)
    assert type(got['indices']) is type(expected['indices'])
    levels_got, levels_exp = ((got['indices'], ), (expected['indices'], )) \
        if torch.is_tensor(expected['indices']) else (got['indices'],
                                                      expected['indices'])
    assert len(levels_got) == len(levels_exp)
    for a, b in zip(levels_got, levels_exp):
        assert a.dtype == torch.int64 and torch.equal(a, b)
    for key in ('sample_idx', 'gt_label'):
        if key in expected:
            assert type(got[key]) is int and got[key] == expected[key]


def _write_seit_split(tmp_path, grids, labels=LABELS, name='in'):
    token_file = str(tmp_path / f'{name}-token.data.bin.gz')
    label_file = str(tmp_path / f'{name}-label.txt')
    write_seit(token_file, grids, labels=labels, label_file=label_file)
    return token_file, label_file


def _write_compact_file(tmp_path, grids, labels=LABELS, sample_idx=None,
                        name='c.vtk', **kw):
    path = str(tmp_path / name)
    write_compact(path, np.stack([g.reshape(-1) for g in grids]),
                  CODEBOOK, levels=[dict(name='indices', shape=list(GRID))],
                  labels=labels, sample_idx=sample_idx, **kw)
    return path


def _class_files(tmp_path):
    """An ImageNet-100-style class list (ids, names, comments, blanks) and
    the class-name file resolving the names: selects classes 3, 1, 4."""
    class_file = tmp_path / 'classes.txt'
    class_file.write_text('# a subset\n3\n\nn_bear   # a wnid-style name\n'
                          '  4\n')
    names_file = tmp_path / 'synsets.txt'
    names_file.write_text(''.join(f'{n} description of {n}\n'
                                  for n in NAMES) + '\n')
    return str(class_file), str(names_file), [3, 1, 4]


# --- the same samples as TokenShardDataset -----------------------------------
def test_seit_dataset_matches_token_shards(tmp_path):
    grids = _grids()
    token_file, label_file = _write_seit_split(tmp_path, grids)
    assert DATASETS.get('SeiTTokenDataset') is SeiTTokenDataset
    cases = [
        # (dataset, reference export) with and without labels / grid
        (SeiTTokenDataset(token_file, label_file, grid=GRID),
         _write_wds(tmp_path / 'a', [[g] for g in grids], 'tensor', LABELS)),
        (SeiTTokenDataset(token_file, grid=None),
         _write_wds(tmp_path / 'b', [[g.reshape(-1)] for g in grids],
                    'tensor')),
    ]
    for dataset, reference in cases:
        assert len(dataset) == len(reference) == len(grids)
        np.testing.assert_array_equal(dataset.positions,
                                      np.arange(len(grids)))
        for i in range(len(grids)):
            _assert_same_sample(dataset[i], reference[i])
    assert 'gt_label' not in cases[1][0][0]
    assert cases[0][0][-1]['sample_idx'] == len(grids) - 1


@pytest.mark.parametrize('structure', ['tensor', 'list', 'tuple'])
def test_compact_dataset_matches_token_shards(tmp_path, structure):
    """Tensor (no sample_idx section: positions), list / tuple multi-level
    files with a sample_idx section; the context model on tuples."""
    n = len(LABELS)
    if structure == 'tensor':
        shapes, sample_idx, model = [GRID], None, 'order0'
    else:
        shapes = [(1, 1), (2, 2), (3, 3)]
        sample_idx = [1000 + 7 * i for i in range(n)]
        model = 'order0' if structure == 'list' else 'context'
    rng = np.random.default_rng(1)
    levels = [[rng.integers(0, 40, size=s) for s in shapes]
              for _ in range(n)]
    path = str(tmp_path / 'tokens.vtk')
    names = (['indices'] if structure == 'tensor' else
             [f'level{k}' for k in range(len(shapes))])
    write_compact(path, [np.concatenate([lv.reshape(-1) for lv in image])
                         for image in levels], CODEBOOK,
                  levels=[dict(name=name, shape=list(s))
                          for name, s in zip(names, shapes)],
                  structure=structure, model=model, labels=LABELS,
                  sample_idx=sample_idx)
    dataset = CompactTokenDataset(path)
    reference = _write_wds(tmp_path / 'wds', levels, structure, LABELS,
                           sample_idx)
    assert DATASETS.get('CompactTokenDataset') is CompactTokenDataset
    assert len(dataset) == len(reference) == n
    for i in range(n):
        _assert_same_sample(dataset[i], reference[i])
        assert dataset[i]['sample_idx'] == (i if sample_idx is None else
                                            sample_idx[i])


# --- class lists -------------------------------------------------------------
def _make(kind, tmp_path, grids, labels=LABELS, **kw):
    if kind == 'seit':
        token_file, label_file = _write_seit_split(tmp_path, grids, labels)
        return SeiTTokenDataset(token_file, label_file, grid=GRID, **kw)
    return CompactTokenDataset(_write_compact_file(tmp_path, grids, labels),
                               **kw)


@pytest.mark.parametrize('kind', ['seit', 'compact'])
def test_class_list_selects_those_classes_in_file_order(tmp_path, kind):
    grids = _grids()
    class_file, names_file, ids = _class_files(tmp_path)
    expected = [i for i, label in enumerate(LABELS) if label in ids]
    for classes in (class_file, ['3', 'n_bear', 4], [3, 1, 4]):
        dataset = _make(kind, tmp_path, grids, classes=classes,
                        class_names=names_file)
        assert dataset.positions.tolist() == expected
        assert len(dataset) == len(expected)
        for i, position in enumerate(expected):
            sample = dataset[i]
            assert torch.equal(sample['indices'],
                               torch.from_numpy(grids[position]))
            assert sample['sample_idx'] == position
            # the class's position in the list (ImageNet-100 convention)
            assert sample['gt_label'] == ids.index(LABELS[position])
    kept = _make(kind, tmp_path, grids, classes=class_file,
                 class_names=NAMES, remap_labels=False)
    assert [kept[i]['gt_label'] for i in range(len(kept))] == [
        LABELS[p] for p in expected]


@pytest.mark.parametrize('text, line, message', [
    ('3\nn_bear\n', 2, 'needs class_names'),
    ('3\nn_zebra\n', 2, 'unknown class name'),
    ('3\n1\n# x\nn_dog\n', 4, 'listed twice'),
    ('3\n\n9\n', 3, 'no image has class 9'),
    ('3\n1 4\n', 2, 'expected one integer'),
])
def test_class_list_errors_name_the_file_and_line(tmp_path, text, line,
                                                  message):
    class_file = tmp_path / 'bad.txt'
    class_file.write_text(text)
    names = None if message == 'needs class_names' else NAMES
    with pytest.raises(ValueError, match=message) as err:
        select_images(np.array(LABELS), str(class_file), class_names=names)
    assert f'{class_file} line {line}' in str(err.value)


# --- class-balanced subsets ------------------------------------------------
def _half_up(fraction, n):
    """The documented count, written independently: the float product,
    rounded half up by decimal, at least 1."""
    exact = Decimal(fraction * n)  # the exact value of the float product
    return max(1, int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP)))


def _rederive(labels, fraction, seed):
    """The documented rule, literally, with plain Python loops."""
    kept = []
    for c in sorted(set(labels)):
        members = [i for i, label in enumerate(labels) if label == c]
        order = np.random.default_rng([seed, c]).permutation(len(members))
        kept += [members[j] for j in order[:_half_up(fraction, len(members))]]
    return sorted(kept)


def test_class_balanced_subset_counts_and_members():
    sizes = {0: 1, 2: 2, 5: 3, 6: 4, 7: 5, 9: 6, 11: 10, 12: 30}
    labels = np.random.default_rng(3).permutation(
        np.repeat(list(sizes), list(sizes.values())))
    # 0.5 of 5 -> 3 and 0.15 of 10 -> 2: half up (round() would give 2, 1)
    assert _half_up(0.5, 5) == 3 and _half_up(0.15, 10) == 2
    for fraction in (0.05, 0.1, 0.15, 0.25, 0.3, 1 / 3, 0.5, 0.7, 1.0):
        selected = select_images(labels, fraction=fraction, seed=4)
        assert np.all(np.diff(selected) > 0)  # file order, no repeats
        for c, n in sizes.items():
            assert np.sum(labels[selected] == c) == _half_up(fraction, n)
        assert selected.tolist() == _rederive(labels.tolist(), fraction, 4)
    np.testing.assert_array_equal(select_images(labels, fraction=1.0),
                                  np.arange(labels.size))
    first = select_images(labels, fraction=0.5, seed=4)
    np.testing.assert_array_equal(
        first, select_images(labels, fraction=0.5, seed=4))
    assert not np.array_equal(first,
                              select_images(labels, fraction=0.5, seed=5))
    # after the class list, only the listed classes are subsampled
    both = select_images(labels, [12, 7], fraction=0.5, seed=4)
    assert both.tolist() == [i for i in _rederive(labels.tolist(), 0.5, 4)
                             if labels[i] in (12, 7)]


@pytest.mark.parametrize('kind', ['seit', 'compact'])
def test_datasets_apply_the_subset_and_remap(tmp_path, kind):
    grids = _grids()
    expected = select_images(np.array(LABELS), [4, 3, 0], fraction=0.5,
                             seed=2)
    dataset = _make(kind, tmp_path, grids, classes=[4, 3, 0],
                    subset_fraction=0.5, subset_seed=2)
    assert dataset.positions.tolist() == expected.tolist()
    assert expected.tolist() == [
        i for i in _rederive(LABELS, 0.5, 2) if LABELS[i] in (4, 3, 0)]
    for i, position in enumerate(expected.tolist()):
        sample = dataset[i]
        assert torch.equal(sample['indices'],
                           torch.from_numpy(grids[position]))
        assert sample['gt_label'] == [4, 3, 0].index(LABELS[position])


# --- bad input ---------------------------------------------------------------
@pytest.mark.parametrize('fraction', [0, -0.1, 1.5, float('nan'), True, '1'])
def test_bad_fraction(fraction):
    with pytest.raises(ValueError, match='subset_fraction'):
        select_images(np.array(LABELS), fraction=fraction)


def test_missing_labels_and_files_are_named(tmp_path):
    grids = _grids()
    token_file, label_file = _write_seit_split(tmp_path, grids)
    with pytest.raises(ValueError, match='subset_fraction.*label_file'):
        SeiTTokenDataset(token_file, grid=GRID, subset_fraction=0.5)
    with pytest.raises(ValueError, match='classes.*label_file'):
        SeiTTokenDataset(token_file, grid=GRID, classes=[1])
    path = _write_compact_file(tmp_path, grids, labels=None)
    with pytest.raises(ValueError, match=re.escape(f'{path} has no labels')):
        CompactTokenDataset(path, subset_fraction=0.5)
    labelled = _write_compact_file(tmp_path, grids, name='l.vtk')
    missing = str(tmp_path / 'nope-token.data.bin.gz')
    for call, argument, name in [
            (lambda: SeiTTokenDataset(missing), 'token_file', missing),
            (lambda: SeiTTokenDataset(token_file, label_file=missing),
             'label_file', missing),
            (lambda: SeiTTokenDataset(token_file, index_file=missing),
             'index_file', missing),
            (lambda: CompactTokenDataset(missing), 'filename', missing),
            (lambda: CompactTokenDataset(labelled, classes=missing),
             'classes', missing),
            (lambda: SeiTTokenDataset(token_file, label_file,
                                      classes=['n_cat'],
                                      class_names=missing),
             'class_names', missing)]:
        with pytest.raises(FileNotFoundError) as err:
            call()
        assert f'{argument}={name!r}' in str(err.value)
    (tmp_path / 'in-token.index.npy.gz').unlink()
    with pytest.raises(FileNotFoundError, match='index_file'):
        SeiTTokenDataset(token_file)


@pytest.mark.parametrize('kind', ['seit', 'compact'])
def test_index_out_of_range(tmp_path, kind):
    dataset = _make(kind, tmp_path, _grids(), classes=[3])
    n = LABELS.count(3)
    assert len(dataset) == n
    assert torch.equal(dataset[-1]['indices'], dataset[n - 1]['indices'])
    for bad in (n, -n - 1):
        with pytest.raises(IndexError, match='out of range'):
            dataset[bad]


# --- workers -----------------------------------------------------------------
def test_seit_stream_is_loaded_per_process_not_pickled(tmp_path):
    token_file, _ = _write_seit_split(tmp_path, _grids(n=200), [0] * 200)
    dataset = SeiTTokenDataset(token_file, grid=GRID)
    before = len(pickle.dumps(dataset))
    first = dataset[5]  # loads the stream in this process
    assert len(pickle.dumps(dataset)) == before
    copy = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(copy[5]['indices'], first['indices'])


@pytest.mark.parametrize('kind', ['seit', 'compact'])
def test_dataloader_worker_reads_the_same_tokens(tmp_path, kind):
    grids = _grids()
    dataset = _make(kind, tmp_path, grids, subset_fraction=0.5)
    loader = DataLoader(dataset, batch_size=None, num_workers=1)
    got = list(loader)
    assert len(got) == len(dataset)
    for i, sample in enumerate(got):
        _assert_same_sample(sample, dataset[i])
        assert torch.equal(sample['indices'],
                           torch.from_numpy(grids[dataset.positions[i]]))
