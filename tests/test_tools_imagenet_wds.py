"""tools/dataset_converters/imagenet_to_wds.py, TarShardDataset and
configs/_base_/datasets/imagenet_256_wds.py on a tiny fake ImageNet."""
import importlib.util
import json
import os
import os.path as osp
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, DefaultSampler
from mmengine.registry import DefaultScope
from PIL import Image

from _helpers import REPO_ROOT, subprocess_env
from vistok.datasets.base import build_pipeline
from vistok.datasets.tar_shards import TarShardDataset
from vistok.datasets.transforms.loading import read_image_rgb
from vistok.datasets.webdataset import WebDatasetShards
from vistok.registry import DATASETS

TOOL = osp.join(REPO_ROOT, 'tools/dataset_converters/imagenet_to_wds.py')
CONFIG = osp.join(REPO_ROOT, 'configs/_base_/datasets/imagenet_256_wds.py')
WNIDS = ('n02000000', 'n01000000', 'n03000000')  # created unsorted
VAL_WNIDS = ('n03000000', 'n01000000', 'n02000000', 'n01000000', 'n03000000')
spec = importlib.util.spec_from_file_location('imagenet_to_wds', TOOL)
tool = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = tool  # --workers pickles its functions by name
spec.loader.exec_module(tool)


def _save(path, shape, seed, mode='RGB', fmt='JPEG'):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
    image.convert(mode).save(path, format=fmt)


def make_imagenet(root):
    """3 wnids x 3 train images of different sizes (one grayscale JPEG, one
    CMYK JPEG, one PNG named .JPEG, as in the real train set) and a flat val
    folder of 5 images with a Kaggle LOC_val_solution.csv."""
    for c, wnid in enumerate(WNIDS):
        os.makedirs(root / 'train' / wnid)
        for j in range(3):
            _save(root / 'train' / wnid / f'{wnid}_{j}.JPEG',
                  (40 + 7 * j, 50 + 5 * c, 3), 10 * c + j)
    _save(root / 'train/n01000000/n01000000_0.JPEG', (44, 52, 3), 1, 'L')
    _save(root / 'train/n02000000/n02000000_1.JPEG', (50, 41, 3), 2, 'CMYK')
    _save(root / 'train/n03000000/n03000000_2.JPEG', (39, 60, 3), 3,
          fmt='PNG')
    os.makedirs(root / 'val')
    rows = ['ImageId,PredictionString']
    for i, wnid in enumerate(VAL_WNIDS):
        name = f'ILSVRC2012_val_{i + 1:08d}'
        _save(root / 'val' / f'{name}.JPEG', (45 + i, 56 - i, 3), 100 + i)
        rows.append(f'{name},{wnid} 1 2 30 40 {wnid} 5 6 7 8')
    # rows out of file order: the val order must come from the file names
    (root / 'LOC_val_solution.csv').write_text(
        '\n'.join(rows[:1] + rows[:0:-1]) + '\n')
    return root


def read_shard(path):
    """``[(key, {ext: bytes})]`` in tar order."""
    samples = []
    with tarfile.open(path) as tar:
        for member in tar:
            key, ext = member.name.split('.', 1)
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][ext] = tar.extractfile(member).read()
    return samples


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = make_imagenet(tmp_path_factory.mktemp('imagenet'))
    out = root / 'wds'
    proc = subprocess.run(
        [sys.executable, TOOL, str(root), str(out), '--split', 'val',
         '--shard-size', '2', '--val-labels',
         str(root / 'LOC_val_solution.csv')],
        env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # progress lines in a log (not a tty): 5 val images
    assert 'val shards: 5/5 (100.0%), ' in proc.stderr
    tool.convert(str(root), str(out), 'train', shard_size=4, seed=0)
    return root, out, proc.stdout


def test_train_shards_hold_original_bytes_and_imagefolder_labels(data):
    root, out, _ = data
    manifest = json.loads((out / 'manifest-train.json').read_text())
    classes = sorted(WNIDS)
    assert manifest['classes'] == classes and manifest['complete']
    assert manifest['num_samples'] == 9
    assert manifest['urls'] == 'imagenet-train-{000000..000002}.tar'
    assert [s['num_samples'] for s in manifest['shards']] == [4, 4, 1]
    samples = []
    for shard in manifest['shards']:
        path = out / shard['name']
        assert tool.sha256_file(str(path)) == shard['sha256']
        samples += read_shard(path)
    # seeded permutation of the ImageFolder order (class, then file name)
    image_folder_order = [f'{w}_{j}' for w in classes for j in range(3)]
    order = np.random.default_rng(0).permutation(9)
    assert [key for key, _ in samples] == [image_folder_order[i]
                                           for i in order]
    for key, members in samples:
        wnid = key.split('_')[0]
        source = root / 'train' / wnid / f'{key}.JPEG'
        ext = 'png' if key == 'n03000000_2' else 'jpg'
        assert sorted(members) == sorted([ext, 'cls', 'json'])
        assert members[ext] == source.read_bytes()
        assert int(members['cls']) == classes.index(wnid)
        meta = json.loads(members['json'])
        assert meta['path'] == f'train/{wnid}/{key}.JPEG'
        assert meta['wnid'] == wnid
    # the streaming loader decodes grayscale, CMYK and PNG to RGB
    stream = {s['sample_key']: s for s in WebDatasetShards(
        str(out / manifest['urls']), shuffle=False)}
    assert len(stream) == 9
    for key, sample in stream.items():
        source = root / 'train' / key.split('_')[0] / f'{key}.JPEG'
        with Image.open(source) as image:
            expected = np.asarray(image.convert('RGB'))
        assert sample['img'].shape == expected.shape
        np.testing.assert_array_equal(sample['img'], expected)
    gray = stream['n01000000_0']['img']
    assert (gray[..., 0] == gray[..., 2]).all()


def test_val_from_label_file_sorted_by_name(data):
    root, out, stdout = data
    assert "urls = '" + str(out / 'imagenet-val-{000000..000002}.tar') + "'" \
        in stdout
    assert 'num_samples = 5' in stdout
    manifest = json.loads((out / 'manifest-val.json').read_text())
    assert manifest['layout'] == 'flat+labels'
    assert manifest['classes'] == sorted(WNIDS)  # from the train folders
    assert [s['num_samples'] for s in manifest['shards']] == [2, 2, 1]
    samples = [s for shard in manifest['shards']
               for s in read_shard(out / shard['name'])]
    assert [key for key, _ in samples] == [
        f'ILSVRC2012_val_{i:08d}' for i in range(1, 6)]
    for (key, members), wnid in zip(samples, VAL_WNIDS):
        assert members['jpg'] == (root / 'val' / f'{key}.JPEG').read_bytes()
        assert int(members['cls']) == sorted(WNIDS).index(wnid)


def test_resume_keeps_good_shards_and_rewrites_a_damaged_one(data, tmp_path):
    root, _, _ = data
    out = tmp_path / 'wds'
    first = tool.convert(str(root), str(out), 'train', shard_size=4)
    paths = [out / s['name'] for s in first['shards']]
    before = [(os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in paths]
    with open(paths[1], 'r+b') as f:  # damage one shard
        f.seek(600)
        f.write(b'\0' * 16)
    (out / 'imagenet-train-000002.tar.tmp').write_bytes(b'half written')
    second = tool.convert(str(root), str(out), 'train', shard_size=4,
                          workers=2)
    after = [(os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in paths]
    assert after[0] == before[0] and after[2] == before[2]
    assert after[1] != before[1]
    assert second['shards'] == first['shards'] and second['complete']
    assert tool.sha256_file(str(paths[1])) == first['shards'][1]['sha256']
    assert sorted(os.listdir(out)) == sorted(
        [p.name for p in paths] + ['manifest-train.json'])


@pytest.mark.parametrize('damage, message', [
    ('drop_label', 'has no label for .*ILSVRC2012_val_00000003'),
    ('extra_label', "lists 'ILSVRC2012_val_00000009'"),
    ('unknown_wnid', "wnid 'n09999999' is not in the 1 classes"),
    ('not_image_file', r'notes\.txt is not an image'),
    ('not_image_bytes', r'n01000000_1\.JPEG is not a readable image'),
    ('empty_split', 'has no class folders: empty split'),
])
def test_refuses_bad_input(data, tmp_path, damage, message):
    source, _, _ = data
    root = tmp_path / 'in'
    for rel in ('train/n01000000/n01000000_1.JPEG',
                'val/ILSVRC2012_val_00000003.JPEG'):
        os.makedirs((root / rel).parent, exist_ok=True)
        (root / rel).write_bytes((source / rel).read_bytes())
    label = 'ILSVRC2012_val_00000003,n01000000 1 2 3 4\n'
    split = 'val'
    if damage == 'drop_label':
        label = ''
    elif damage == 'extra_label':
        label += 'ILSVRC2012_val_00000009,n01000000 1 2 3 4\n'
    elif damage == 'unknown_wnid':
        label = label.replace('n01000000', 'n09999999')
    elif damage == 'not_image_file':
        (root / 'train/n01000000/notes.txt').write_text('x')
        split = 'train'
    elif damage == 'not_image_bytes':
        (root / 'train/n01000000/n01000000_1.JPEG').write_bytes(b'no image')
        split = 'train'
    elif damage == 'empty_split':
        os.remove(root / 'train/n01000000/n01000000_1.JPEG')
        os.rmdir(root / 'train/n01000000')
        split = 'train'
    (root / 'labels.csv').write_text('ImageId,PredictionString\n' + label)
    with pytest.raises(ValueError, match=message):
        tool.convert(str(root), str(tmp_path / 'out'), split,
                     val_labels=str(root / 'labels.csv') if split == 'val'
                     else None)


def _config_datasets(out):
    cfg = Config.fromfile(CONFIG)
    val_cfg = dict(cfg.val_dataloader.dataset, data_root=str(out))
    train_cfg = dict(cfg.train_dataloader.dataset,
                     urls=str(out / 'imagenet-train-{000000..000002}.tar'))
    with DefaultScope.overwrite_default_scope('vistok'):
        return cfg, DATASETS.build(val_cfg), DATASETS.build(train_cfg)


def test_config_val_crops_equal_the_original_pipeline(data):
    root, out, _ = data
    cfg, val, train = _config_datasets(out)
    assert cfg.val_dataloader.sampler.type == 'DefaultSampler'
    assert cfg.train_dataloader.sampler is None and train.repeat
    assert len(train) == 1281167  # the config's num_samples
    assert next(iter(train))['inputs'].shape == (3, 256, 256)
    assert isinstance(val, TarShardDataset) and len(val) == 5
    assert val.metainfo['classes'] == tuple(sorted(WNIDS))
    reference = Compose(build_pipeline([dict(type='LoadImageRGB')]
                                       + cfg.test_pipeline))
    for i in range(len(val)):
        item = val[i]
        name = f'ILSVRC2012_val_{i + 1:08d}'
        expected = reference(dict(img_path=str(root / 'val' /
                                                f'{name}.JPEG')))
        assert item['inputs'].shape == (3, 256, 256)
        assert item['inputs'].dtype == torch.uint8
        assert torch.equal(item['inputs'], expected['inputs'])
        assert int(item['data_samples'].gt_label) == sorted(WNIDS).index(
            VAL_WNIDS[i])
    by_urls = TarShardDataset(
        urls=str(out / 'imagenet-val-{000000..000002}.tar'))
    assert [by_urls.get_data_info(i)['sample_key'] for i in range(5)] == [
        val.get_data_info(i)['sample_key'] for i in range(5)]
    assert np.array_equal(
        by_urls.prepare_data(4)['img'],
        read_image_rgb((root / 'val/ILSVRC2012_val_00000005.JPEG')
                       .read_bytes()))


def test_manifest_checks(data, tmp_path):
    _, out, _ = data
    manifest = json.loads((out / 'manifest-val.json').read_text())
    manifest['shards'][2]['num_samples'] = 2
    (out / 'manifest-bad.json').write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match='holds 1 samples, its manifest'):
        TarShardDataset(manifest=str(out / 'manifest-bad.json'))
    manifest['complete'] = False
    (out / 'manifest-bad.json').write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match='conversion is incomplete'):
        TarShardDataset(manifest=str(out / 'manifest-bad.json'))
    os.remove(out / 'manifest-bad.json')


def test_two_ranks_gather_every_val_image_once(data, tmp_path, monkeypatch):
    """DefaultSampler pads 5 images to 2 x 3; mmengine's collect_results
    (the real function, with rank 1's part written as it would write it)
    interleaves the parts and drops the padding."""
    import mmengine.dataset.sampler as sampler_module
    import mmengine.dist.dist as dist_module
    _, out, _ = data
    val = TarShardDataset(manifest=str(out / 'manifest-val.json'),
                          pipeline=[dict(type='PackInputs')], test_mode=True)
    parts = []
    for rank in range(2):
        monkeypatch.setattr(sampler_module, 'get_dist_info',
                            lambda rank=rank: (rank, 2))
        sampler = DefaultSampler(val, shuffle=False, seed=0)
        seen = [val[i]['data_samples'].sample_idx for i in sampler]
        parts.append([val.get_data_info(i)['sample_key'] for i in seen])
    assert [len(p) for p in parts] == [3, 3]  # one padded duplicate
    collect_dir = tmp_path / 'collect'
    os.makedirs(collect_dir)
    with open(collect_dir / 'part_1.pkl', 'wb') as f:
        pickle.dump(parts[1], f, protocol=2)
    monkeypatch.setattr(dist_module, 'get_dist_info', lambda: (0, 2))
    monkeypatch.setattr(dist_module, 'barrier', lambda: None)
    gathered = dist_module.collect_results_cpu(parts[0], len(val),
                                               tmpdir=str(collect_dir))
    assert gathered == [f'ILSVRC2012_val_{i:08d}' for i in range(1, 6)]
