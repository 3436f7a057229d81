"""tools/export_tokens.py, vistok.datasets.token_shards and
vistok.apis.tokenize: exact round trips, resume and refusals."""
import hashlib
import io
import json
import os
import os.path as osp
import re
import runpy
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from safetensors.torch import save_file
from webdataset.tariterators import tarfile_samples

from _helpers import REPO_ROOT, subprocess_env
from vistok.apis.tokenize import detokenize, load_tokenizer, tokenize
from vistok.datasets import token_shards
from vistok.datasets.seit_format import read_seit_codebook
from vistok.datasets.token_files import CompactTokenDataset, SeiTTokenDataset
from vistok.datasets.token_shards import TokenShardDataset, index_dtype
from vistok.models.utils.token_ids import from_token_sequence
from vistok.registry import DATASETS, MODELS
from vistok.utils.checkpoint import CheckpointLoadError

TINY_CONFIG = osp.join(REPO_ROOT, 'tests/data/configs/tiny_vqvae.py')
TOOL = osp.join(REPO_ROOT, 'tools/export_tokens.py')
NUM_IMAGES = 20
SHARD_SIZE = 6  # shards of 6, 6, 6, 2 samples
BATCH_SIZE = 4  # batches of 4 and 2 inside each shard
DATA_OPTIONS = [f'val_dataloader.dataset.num_samples={NUM_IMAGES}']

# tiny_vqvae: 32 px images, downsampling factor 2 -> 16 x 16 token grid of
# 8 channels
QUANTIZERS = {
    'vq': None,
    'residual': dict(_delete_=True, type='ResidualQuantizer', depth=2,
                     quantizer=dict(type='VectorQuantizer',
                                    codebook_size=300, embed_dim=8)),
    'multiscale': dict(_delete_=True, type='MultiScaleResidualQuantizer',
                       scales=(1, 2, 4, 16), num_phi=2,
                       quantizer=dict(type='VectorQuantizer', codebook_size=64,
                                      embed_dim=8, use_l2_norm=True)),
    'hierarchical': dict(_delete_=True, type='HierarchicalQuantizer',
                         top_quantizer=dict(type='VectorQuantizer',
                                            codebook_size=48, embed_dim=32),
                         bottom_quantizer=dict(type='VectorQuantizer',
                                               codebook_size=40,
                                               embed_dim=8)),
}
#: (structure, per-sample level shapes, codebook_size, dtype)
EXPECTED = {
    'vq': ('tensor', [[16, 16]], 64, 'uint8'),
    'residual': ('tensor', [[16, 16, 2]], 300, 'uint16'),
    'multiscale': ('list', [[1, 1], [2, 2], [4, 4], [16, 16]], 64, 'uint8'),
    'hierarchical': ('tuple', [[8, 8], [16, 16]], 88, 'uint8'),
}


@pytest.fixture(scope='module')
def tool():
    return runpy.run_path(TOOL)


def make_tokenizer(tmp_path, kind, seed=0, **model_options):
    """A config file for ``kind`` (plus ``model_options``) and a checkpoint
    of random weights."""
    name = '-'.join([kind, *model_options])
    config = tmp_path / f'{name}.py'
    if QUANTIZERS[kind] is not None:
        model_options['quantizer'] = QUANTIZERS[kind]
    config.write_text(f'_base_ = [{TINY_CONFIG!r}]\n'
                      f'model = dict(**{model_options!r})\n')
    torch.manual_seed(seed)
    model = MODELS.build(Config.fromfile(str(config)).model)
    checkpoint = tmp_path / f'{name}-{seed}.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict(iter=1)),
               checkpoint)
    return str(config), str(checkpoint)


def export_args(config, checkpoint, out, *extra, shard_size=SHARD_SIZE):
    """Arguments of tools/export_tokens.py; ``extra`` continues
    ``--cfg-options`` (``k=v``) or adds flags."""
    return [config, checkpoint, '--data', 'val', '--out', str(out),
            '--shard-size', str(shard_size), '--batch-size', str(BATCH_SIZE),
            '--cfg-options', *DATA_OPTIONS, *extra]


def source_images(config):
    cfg = Config.fromfile(config)
    cfg.val_dataloader.dataset.num_samples = NUM_IMAGES
    dataset = DATASETS.build(cfg.val_dataloader.dataset)
    return torch.stack([dataset[i]['inputs'] for i in range(len(dataset))])


def direct_indices(model, images):
    """Tokenize with the export's batches (aligned to shards), one tensor /
    list / tuple for the whole set."""
    batches = [
        tokenize(model, images[s:min(s + BATCH_SIZE, shard + SHARD_SIZE)])
        for shard in range(0, len(images), SHARD_SIZE)
        for s in range(shard, min(shard + SHARD_SIZE, len(images)),
                       BATCH_SIZE)]
    return collate(batches)


def collate(items, stack=False):
    """Concatenate (or stack, for per-sample items) index structures."""
    join = torch.stack if stack else torch.cat
    first = items[0]
    if torch.is_tensor(first):
        return join(items)
    return type(first)(join([item[k] for item in items])
                       for k in range(len(first)))


def assert_indices_equal(a, b):
    assert type(a) is type(b)
    a_levels = [a] if torch.is_tensor(a) else list(a)
    b_levels = [b] if torch.is_tensor(b) else list(b)
    assert len(a_levels) == len(b_levels)
    for x, y in zip(a_levels, b_levels):
        assert x.dtype == y.dtype == torch.int64
        assert torch.equal(x, y)


def shard_bytes(out):
    return {name: open(osp.join(out, name), 'rb').read()
            for name in sorted(os.listdir(out)) if name.endswith('.tar')}


def test_index_dtype_is_the_smallest_fitting_one():
    assert index_dtype(256) == np.uint8 and index_dtype(257) == np.uint16
    assert index_dtype(65536) == np.uint16 and index_dtype(65537) == np.uint32
    assert index_dtype(64, signed=True) == np.int32


def test_tokenize_detokenize_api(tmp_path):
    config, checkpoint = make_tokenizer(tmp_path, 'vq')
    model = load_tokenizer(config, checkpoint)
    assert not model.training
    reference = MODELS.build(Config.fromfile(config).model)
    reference.load_state_dict(torch.load(checkpoint)['state_dict'])
    reference.eval()
    images = source_images(config)[:5]
    indices = tokenize(model, images)
    with torch.no_grad():
        expected = reference.encode((images.float() - 127.5) / 127.5)
        pixels = reference.to_pixels(reference.decode(expected))
    assert torch.equal(indices, expected) and indices.shape == (5, 16, 16)
    assert len(indices.unique()) > 1
    # float [0, 255] and a list of images give the same tokens
    assert torch.equal(tokenize(model, images.float()), indices)
    assert torch.equal(tokenize(model, list(images)), indices)
    decoded = detokenize(model, indices)
    assert decoded.dtype == torch.uint8 and decoded.shape == images.shape
    assert torch.equal(decoded, pixels.round().to(torch.uint8))
    # train mode is restored; dropout is off inside
    model.train()
    assert torch.equal(tokenize(model, images), indices) and model.training

    # a .safetensors export loads the same weights
    exported = tmp_path / 'weights.safetensors'
    save_file(model.state_dict(), str(exported))
    assert torch.equal(tokenize(load_tokenizer(config, str(exported)),
                                images), indices)
    # a checkpoint of another architecture is refused by name
    _, other = make_tokenizer(tmp_path, 'residual')
    with pytest.raises(CheckpointLoadError, match='residual-0.pth'):
        load_tokenizer(config, other)
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        tokenize(model, images[0])
    with pytest.raises(ValueError, match='no EMA copy'):
        tokenize(model, images, use_ema=True)


def test_tokenize_uses_the_ema_copy_as_validation_does(tmp_path):
    config, checkpoint = make_tokenizer(tmp_path, 'vq', ema=dict(decay=0.5))
    model = load_tokenizer(config, checkpoint)
    with torch.no_grad():  # an EMA copy that differs from the live weights
        for p in model.ema.parameters():
            p.add_(torch.randn_like(p))
    images = source_images(config)[:4]
    normalised = (images.float() - 127.5) / 127.5
    with torch.no_grad():
        live = model.encode(normalised)
        with model.ema_weights():
            ema = model.encode(normalised)
            ema_pixels = model.to_pixels(model.decode(ema))
    assert not torch.equal(live, ema)
    assert torch.equal(tokenize(model, images), ema)  # use_for_val default
    assert torch.equal(tokenize(model, images, use_ema=True), ema)
    assert torch.equal(tokenize(model, images, use_ema=False), live)
    assert torch.equal(detokenize(model, ema),
                       ema_pixels.round().to(torch.uint8))
    model.ema_for_val = False
    assert torch.equal(tokenize(model, images), live)


def test_cli_export_reads_back_and_decodes_exactly(tmp_path):
    config, checkpoint = make_tokenizer(tmp_path, 'vq')
    out = tmp_path / 'tokens'
    proc = subprocess.run([sys.executable, TOOL,
                           *export_args(config, checkpoint, out)],
                          env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r'export: (\d+)/\1 \(100.0%\), .* img/s, done in',
                     proc.stderr)  # progress lines in a log (not a tty)

    manifest = json.loads((out / 'manifest.json').read_text())
    with open(checkpoint, 'rb') as f:
        checkpoint_sha = hashlib.sha256(f.read()).hexdigest()
    assert manifest['checkpoint_sha256'] == checkpoint_sha
    assert (manifest['codebook_size'], manifest['dtype'],
            manifest['structure']) == (64, 'uint8', 'tensor')
    assert manifest['levels'] == [dict(name='indices', shape=[16, 16])]
    assert manifest['num_samples'] == NUM_IMAGES and manifest['complete']
    assert manifest['shard_size'] == SHARD_SIZE
    assert [(s['name'], s['start'], s['stop']) for s in manifest['shards']] \
        == [(f'tokens-{k:06d}.tar', 6 * k, min(6 * k + 6, NUM_IMAGES))
            for k in range(4)]
    for shard in manifest['shards']:
        with open(out / shard['name'], 'rb') as f:
            assert hashlib.sha256(f.read()).hexdigest() == shard['sha256']
    assert sorted(os.listdir(out)) == ['manifest.json'] + [
        f'tokens-{k:06d}.tar' for k in range(4)]

    dataset = TokenShardDataset(str(out), verify=True)
    assert len(dataset) == NUM_IMAGES
    samples = [dataset[i] for i in range(len(dataset))]
    assert [s['sample_idx'] for s in samples] == list(range(NUM_IMAGES))
    assert [s['gt_label'] for s in samples] == [i % 6 for i in range(20)]
    read_back = collate([s['indices'] for s in samples], stack=True)

    model = load_tokenizer(config, checkpoint)
    images = source_images(config)
    direct = direct_indices(model, images)
    assert_indices_equal(read_back, direct)
    assert torch.equal(detokenize(model, read_back),
                       detokenize(model, direct))

    # the shards are plain webdataset tars
    wds = list(tarfile_samples([dict(url=str(out / 'tokens-000001.tar'))]))
    assert [s['__key__'] for s in wds] == [f'{i:08d}' for i in range(6, 12)]
    first = np.load(io.BytesIO(wds[0]['indices.npy']))
    assert first.dtype == np.uint8
    assert torch.equal(torch.from_numpy(first.astype(np.int64)), direct[6])


@pytest.mark.parametrize('kind', ['residual', 'multiscale', 'hierarchical'])
def test_multi_level_export_round_trip(tool, tmp_path, kind):
    config, checkpoint = make_tokenizer(tmp_path, kind)
    out = tmp_path / 'tokens'
    manifest = tool['main'](export_args(config, checkpoint, out))
    structure, shapes, codebook_size, dtype = EXPECTED[kind]
    assert manifest['structure'] == structure
    assert [level['shape'] for level in manifest['levels']] == shapes
    assert (manifest['codebook_size'], manifest['dtype']) == (codebook_size,
                                                              dtype)

    dataset = TokenShardDataset(str(out), verify=True)
    read_back = collate([dataset[i]['indices'] for i in range(len(dataset))],
                        stack=True)
    model = load_tokenizer(config, checkpoint)
    direct = direct_indices(model, source_images(config))
    finest = direct if torch.is_tensor(direct) else direct[-1]
    assert len(finest.unique()) > 1
    assert_indices_equal(read_back, direct)
    assert torch.equal(detokenize(model, read_back),
                       detokenize(model, direct))


@pytest.mark.parametrize('kind', ['vq', 'residual', 'multiscale'])
def test_flat_sequence_export_undoes_to_the_indices(tool, tmp_path, kind):
    config, checkpoint = make_tokenizer(tmp_path, kind)
    out = tmp_path / 'tokens'
    manifest = tool['main'](export_args(config, checkpoint, out,
                                        '--flat-sequence'))
    structure, shapes, codebook_size, dtype = EXPECTED[kind]
    assert manifest['token_order'] == dict(
        vq='raster', residual='ResidualQuantizer.to_sequence',
        multiscale='MultiScaleResidualQuantizer.to_sequence')[kind]
    assert manifest['sequence'] == dict(structure=structure, shapes=shapes)
    length = sum(int(np.prod(shape)) for shape in shapes)
    assert (manifest['structure'], manifest['levels']) == (
        'tensor', [dict(name='indices', shape=[length])])
    assert (manifest['codebook_size'], manifest['dtype'],
            manifest['id_map']) == (codebook_size, dtype, None)
    dataset = TokenShardDataset(str(out), verify=True)
    stored = torch.stack([dataset[i]['indices'] for i in range(NUM_IMAGES)])
    model = load_tokenizer(config, checkpoint)
    direct = direct_indices(model, source_images(config))
    if kind == 'vq':  # raster order
        expected = [direct[:, i, j] for i in range(16) for j in range(16)]
    elif kind == 'residual':  # raster order, the depth ids of a position
        expected = [direct[:, i, j, d] for i in range(16)  # consecutive
                    for j in range(16) for d in range(2)]
    else:  # scale by scale, raster order inside a scale
        expected = [level[:, i, j] for level in direct
                    for i in range(level.shape[1])
                    for j in range(level.shape[2])]
    assert torch.equal(stored, torch.stack(expected, 1))
    assert_indices_equal(
        from_token_sequence(model.quantizer, stored, manifest['sequence']),
        direct)


def test_interrupted_export_resumes_without_loss_or_duplicates(
        tool, tmp_path, monkeypatch):
    config, checkpoint = make_tokenizer(tmp_path, 'vq')
    reference = tmp_path / 'reference'
    expected_manifest = tool['main'](export_args(config, checkpoint,
                                                 reference))
    expected = shard_bytes(reference)

    # 1. a crash while the third shard is being written
    out = tmp_path / 'crashed'
    real_write = token_shards._write_bytes_atomic

    def crash_on_third_shard(data, path):
        if path.endswith('tokens-000002.tar'):
            with open(path + '.tmp', 'wb') as f:
                f.write(data[:len(data) // 2])
            raise KeyboardInterrupt
        real_write(data, path)

    monkeypatch.setattr(token_shards, '_write_bytes_atomic',
                        crash_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        tool['main'](export_args(config, checkpoint, out))
    monkeypatch.setattr(token_shards, '_write_bytes_atomic', real_write)
    crashed = json.loads((out / 'manifest.json').read_text())
    assert [s['stop'] for s in crashed['shards']] == [6, 12]
    assert not crashed['complete']
    assert (out / 'tokens-000002.tar.tmp').exists()
    with pytest.raises(ValueError, match='incomplete'):
        TokenShardDataset(str(out))
    assert len(TokenShardDataset(str(out), allow_incomplete=True)) == 12
    kept_inode = os.stat(out / 'tokens-000000.tar').st_ino

    assert tool['main'](export_args(config, checkpoint,
                                    out)) == expected_manifest
    assert shard_bytes(out) == expected
    assert os.stat(out / 'tokens-000000.tar').st_ino == kept_inode
    assert sorted(os.listdir(out)) == ['manifest.json', *expected]

    # 2. a crash between renaming shard 1 and recording it, with shard 0
    # damaged on disk since: both are written again
    out = tmp_path / 'damaged'
    shutil.copytree(reference, out)
    manifest = dict(expected_manifest, shards=expected_manifest['shards'][:1],
                    complete=False)
    (out / 'manifest.json').write_text(json.dumps(manifest))
    with open(out / 'tokens-000000.tar', 'r+b') as f:
        f.seek(600)
        f.write(b'\xff')
    os.remove(out / 'tokens-000003.tar')
    with pytest.warns(UserWarning, match='tokens-000000.tar'):
        assert tool['main'](export_args(config, checkpoint,
                                        out)) == expected_manifest
    assert shard_bytes(out) == expected
    dataset = TokenShardDataset(str(out), verify=True)
    assert [dataset[i]['sample_idx'] for i in range(len(dataset))] == list(
        range(NUM_IMAGES))


@pytest.mark.parametrize('fmt', ['seit', 'compact'])
def test_interrupted_export_in_stored_formats_resumes_exactly(
        tool, tmp_path, monkeypatch, fmt):
    config, checkpoint = make_tokenizer(tmp_path, 'vq')
    reference = tmp_path / 'reference'
    tool['main'](export_args(config, checkpoint, reference))
    wds = TokenShardDataset(str(reference))
    expected = torch.stack([wds[i]['indices'] for i in range(NUM_IMAGES)])
    labels = [wds[i]['gt_label'] for i in range(NUM_IMAGES)]

    out = tmp_path / fmt
    args = export_args(config, checkpoint, out, '--format', fmt)
    real_write = token_shards._write_bytes_atomic

    def crash_on_third_shard(data, path):
        if path.endswith('tokens-000002.tar'):
            raise KeyboardInterrupt
        real_write(data, path)

    monkeypatch.setattr(token_shards, '_write_bytes_atomic',
                        crash_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        tool['main'](args)
    monkeypatch.setattr(token_shards, '_write_bytes_atomic', real_write)
    crashed = json.loads((out / 'shards' / 'manifest.json').read_text())
    assert [s['stop'] for s in crashed['shards']] == [6, 12]

    record = tool['main'](args)
    names = (['val-token.data.bin.gz', 'val-token.index.npy.gz',
              'val-label.txt', 'codebook.ckpt'] if fmt == 'seit' else
             ['val-tokens.vtok'])
    assert sorted(record['files']) == sorted(names)
    assert sorted(os.listdir(out)) == sorted(['export.json', *names])
    if fmt == 'seit':
        stored = SeiTTokenDataset(str(out / names[0]), grid=(16, 16),
                                  label_file=str(out / names[2]))
    else:
        stored = CompactTokenDataset(str(out / names[0]))
    assert len(stored) == NUM_IMAGES
    assert torch.equal(torch.stack([stored[i]['indices']
                                    for i in range(NUM_IMAGES)]), expected)
    assert [stored[i]['gt_label'] for i in range(NUM_IMAGES)] == labels
    if fmt == 'seit':  # the tokenizer's code vectors, as SeiT ships them
        codebook = read_seit_codebook(str(out / 'codebook.ckpt'))
        model = load_tokenizer(config, checkpoint)
        assert torch.equal(codebook, model.quantizer.code_vectors())
    # finished: a re-run checks the files and stops; another checkpoint is
    # refused
    before = {name: (out / name).read_bytes() for name in names}
    assert tool['main'](args) == record
    assert {name: (out / name).read_bytes() for name in names} == before
    _, other = make_tokenizer(tmp_path, 'vq', seed=1)
    with pytest.raises(ValueError, match='records another export'):
        tool['main'](export_args(config, other, out, '--format', fmt))


def test_export_refuses_to_mix_models_and_checkpoints(tool, tmp_path):
    config, checkpoint = make_tokenizer(tmp_path, 'vq', seed=0)
    _, other_checkpoint = make_tokenizer(tmp_path, 'vq', seed=1)
    out = tmp_path / 'tokens'
    first = tool['main'](export_args(config, checkpoint, out))
    with pytest.raises(ValueError, match='checkpoint_sha256.*--overwrite'):
        tool['main'](export_args(config, other_checkpoint, out))
    with pytest.raises(ValueError, match='config_sha256'):
        tool['main'](export_args(config, checkpoint, out,
                                 'model.quantizer.use_l2_norm=False'))
    with pytest.raises(ValueError, match='shard_size'):
        tool['main'](export_args(config, checkpoint, out, shard_size=5))
    assert shard_bytes(out) and json.loads(
        (out / 'manifest.json').read_text()) == first
    second = tool['main'](export_args(config, other_checkpoint, out,
                                      '--overwrite'))
    assert second['checkpoint_sha256'] != first['checkpoint_sha256']
    assert second['complete'] and len(second['shards']) == 4


def test_token_shard_dataset_errors_name_the_file(tool, tmp_path):
    with pytest.raises(FileNotFoundError, match='manifest.json'):
        TokenShardDataset(str(tmp_path))
    config, checkpoint = make_tokenizer(tmp_path, 'vq')
    out = tmp_path / 'tokens'
    tool['main'](export_args(config, checkpoint, out))
    with open(out / 'tokens-000001.tar', 'r+b') as f:
        f.seek(600)
        f.write(b'\xff')
    dataset = TokenShardDataset(str(out), verify=True)
    assert dataset[0]['indices'].shape == (16, 16)
    with pytest.raises(ValueError, match='tokens-000001.tar'):
        dataset[7]
    (out / 'manifest.json').write_text('{"format": ')
    with pytest.raises(ValueError, match='manifest.json is not valid JSON'):
        TokenShardDataset(str(out))
