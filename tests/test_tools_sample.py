"""tools/sample.py: the ADM .npz layout, per-chunk seeds, byte-identical
resume, ranks splitting the chunks, refusals and FID scoring."""
import os
import os.path as osp
import re
import runpy
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from torch_fidelity.metric_fid import fid_features_to_statistics

from _helpers import REPO_ROOT, subprocess_env, torch_threads
from vistok.apis.tokenize import detokenize, load_tokenizer
from vistok.evaluation.feature_extractors import RandomConvFeatures
from vistok.models.generators.var import VARGenerator
from vistok.registry import MODELS

TINY_CONFIG = osp.join(REPO_ROOT, 'tests/data/configs/tiny_vqvae.py')
TOOL = osp.join(REPO_ROOT, 'tools/sample.py')
# tiny_vqvae: 32 px images -> a 16 x 16 latent of 8 channels
QUANTIZER = dict(type='MultiScaleResidualQuantizer', scales=(1, 2, 4, 16),
                 num_phi=2, quantizer=dict(type='VectorQuantizer',
                                           codebook_size=64, embed_dim=8,
                                           use_l2_norm=True))
GENERATOR = dict(type='VARGenerator', quantizer=QUANTIZER,
                 patch_nums=(1, 2, 4, 16), num_classes=3, depth=1,
                 embed_dim=16, num_heads=2, init_adaln_gamma=0.5,
                 init_head=1.0,
                 sampler=dict(type='TokenSampler', temperature=1.0, top_k=8,
                              guidance_scale=2.0,
                              guidance_schedule='linear'))
NUM_IMAGES, BATCH_SIZE = 10, 4  # chunks of 4, 4 and 2 images


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """In-process runs use the thread count of the subprocess runs they are
    compared with byte for byte."""
    with torch_threads(1):
        yield


@pytest.fixture(scope='module')
def tool():
    return runpy.run_path(TOOL)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Tokenizer and generator configs and random checkpoints."""
    root = tmp_path_factory.mktemp('sample')
    tokenizer_config = root / 'tokenizer.py'
    tokenizer_config.write_text(
        f'_base_ = [{TINY_CONFIG!r}]\n'
        f'model = dict(quantizer=dict(_delete_=True, **{QUANTIZER!r}))\n')
    torch.manual_seed(0)
    tokenizer = MODELS.build(Config.fromfile(str(tokenizer_config)).model)
    tokenizer_checkpoint = root / 'tokenizer.pth'
    torch.save(dict(state_dict=tokenizer.state_dict()), tokenizer_checkpoint)

    generator_config = root / 'var.py'
    generator_config.write_text(
        "custom_imports = dict(imports=['vistok.models.generators.var'], "
        'allow_failed_imports=False)\n'
        f'model = {GENERATOR!r}\n'
        f'tokenizer = dict(config={str(tokenizer_config)!r}, '
        f'checkpoint={str(tokenizer_checkpoint)!r})\n')
    model = MODELS.build(dict(GENERATOR,
                              quantizer_weights=str(tokenizer_checkpoint)))
    model.init_weights()
    checkpoint = root / 'var.pth'
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    other = root / 'var-other.pth'
    torch.manual_seed(1)
    torch.save(dict(state_dict={k: torch.randn_like(v) for k, v in
                                model.state_dict().items()}), other)
    return dict(root=root, config=str(generator_config),
                checkpoint=str(checkpoint), other_checkpoint=str(other),
                tokenizer_config=str(tokenizer_config),
                tokenizer_checkpoint=str(tokenizer_checkpoint))


def sample_args(files, out, *extra, checkpoint=None):
    return [files['config'], checkpoint or files['checkpoint'],
            '--num-images', str(NUM_IMAGES), '--out', str(out),
            '--batch-size', str(BATCH_SIZE), '--seed', '5',
            '--tokenizer-config', files['tokenizer_config'],
            '--tokenizer-checkpoint', files['tokenizer_checkpoint'], *extra]


@pytest.fixture(scope='module')
def reference(tool, files):
    """One uninterrupted single-process run: (path, bytes)."""
    out = files['root'] / 'reference.npz'
    result = tool['main'](sample_args(files, out))
    assert result['complete']
    return out, out.read_bytes()


def test_npz_layout_labels_and_per_chunk_seeds(tool, files, reference):
    out, _ = reference
    with np.load(out) as data:
        assert sorted(data.files) == ['arr_0', 'arr_1']
        images, labels = data['arr_0'], data['arr_1']
    assert images.dtype == np.uint8 and images.shape == (NUM_IMAGES, 32, 32,
                                                         3)
    assert labels.dtype == np.int64
    assert labels.tolist() == [i % 3 for i in range(NUM_IMAGES)]
    assert not osp.exists(files['root'] / 'reference.parts')
    assert len({images[i].tobytes() for i in range(NUM_IMAGES)}) == NUM_IMAGES

    # chunk 1 (images 4..7) is the generator's draw with seed 5 + 1
    model = MODELS.build(dict(GENERATOR,
                              quantizer_weights=files['tokenizer_checkpoint']))
    model.init_weights()
    model.load_state_dict(torch.load(files['checkpoint'])['state_dict'])
    tokenizer = load_tokenizer(files['tokenizer_config'],
                               files['tokenizer_checkpoint'])
    tokens = model.eval().generate(torch.tensor([1, 2, 0, 1]),
                                   generator=torch.Generator().manual_seed(6))
    expected = detokenize(tokenizer, tokens).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(images[4:8], expected)


def test_interrupted_run_resumes_byte_identical(tool, files, reference,
                                                monkeypatch):
    out = files['root'] / 'resumed.npz'
    parts = files['root'] / 'resumed.parts'
    real_generate = VARGenerator.generate
    calls = []

    def crash_on_third_chunk(self, labels, *args, **kwargs):
        calls.append(len(labels))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_generate(self, labels, *args, **kwargs)

    monkeypatch.setattr(VARGenerator, 'generate', crash_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        tool['main'](sample_args(files, out))
    assert sorted(os.listdir(parts)) == ['chunk_000000.npz',
                                         'chunk_000001.npz', 'manifest.json']
    assert not out.exists()
    kept = os.stat(parts / 'chunk_000000.npz').st_ino

    # another checkpoint or seed must not mix with these chunks
    with pytest.raises(ValueError, match='checkpoint_sha256'):
        tool['main'](sample_args(files, out,
                                 checkpoint=files['other_checkpoint']))
    with pytest.raises(ValueError, match=r"\['seed'\]"):
        tool['main'](sample_args(files, out)[:-4] + ['--seed', '6'] +
                     sample_args(files, out)[-4:])

    calls.clear()
    result = tool['main'](sample_args(files, out, '--keep-parts'))
    assert calls == [2]  # only the missing last chunk was drawn
    assert result['complete']
    assert os.stat(parts / 'chunk_000000.npz').st_ino == kept
    assert out.read_bytes() == reference[1]
    with pytest.raises(FileExistsError, match='--overwrite'):
        tool['main'](sample_args(files, out))


def test_two_ranks_give_the_single_process_result(tool, files, reference):
    out = files['root'] / 'ranks.npz'
    parts = files['root'] / 'ranks.parts'
    rank1 = tool['main'](sample_args(files, out, '--rank', '1',
                                     '--world-size', '2'))
    assert not rank1['complete'] and not out.exists()
    assert sorted(os.listdir(parts)) == ['chunk_000001.npz', 'manifest.json']
    rank0 = tool['main'](sample_args(files, out, '--rank', '0',
                                     '--world-size', '2'))
    assert rank0['complete']
    assert out.read_bytes() == reference[1]
    assert not parts.exists()


def test_torchrun_two_processes_give_the_single_process_result(
        files, reference):
    """The command line under torchrun (gloo on CPU), with the tokenizer
    named by the generator config."""
    out = files['root'] / 'torchrun.npz'
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    args = sample_args(files, out, '--launcher', 'pytorch')
    args.remove('--tokenizer-config')
    args.remove(files['tokenizer_config'])
    args.remove('--tokenizer-checkpoint')
    args.remove(files['tokenizer_checkpoint'])
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node',
         '2', '--master_addr', '127.0.0.1', '--master_port', str(port), TOOL,
         *args], env=subprocess_env(), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert out.read_bytes() == reference[1]


def test_fid_of_the_samples(tool, files, reference, capsys):
    """The FID against statistics with the samples' own covariance and a
    mean shifted by δ is ‖δ‖² (Heusel et al. eq. 6)."""
    extractor = RandomConvFeatures(feature_dim=4, num_classes=0)
    with np.load(reference[0]) as data:
        images = torch.from_numpy(data['arr_0']).permute(0, 3, 1, 2)
    stats = fid_features_to_statistics(
        extractor(images)['features'].double())
    delta = np.array([0.5, -1.0, 0.0, 2.0])
    stats_path = files['root'] / 'stats.npz'
    np.savez(stats_path, mu=stats['mu'] + delta, sigma=stats['sigma'])

    out = files['root'] / 'fid.npz'
    result = tool['main'](sample_args(
        files, out, '--fid-reference', str(stats_path),
        '--feature-extractor', 'type=RandomConvFeatures', 'feature_dim=4',
        'num_classes=0'))
    assert result['fid'] == pytest.approx(float(delta @ delta), rel=1e-3)
    printed = capsys.readouterr()
    assert f'FID protocol {result["fid_protocol"]}' in printed.out
    assert re.search(r'sample: (\d+)/\1 \(100.0%\), .* chunk/s, done in',
                     printed.err)  # progress lines in a log (not a tty)


def test_bad_arguments(tool, files):
    with pytest.raises(SystemExit):
        tool['parse_args'](sample_args(files, 'x.npy'))
    with pytest.raises(SystemExit):
        tool['parse_args'](sample_args(files, 'x.npz', '--rank', '2',
                                       '--world-size', '2'))
    with pytest.raises(ValueError, match='--classes'):
        tool['main'](sample_args(files, files['root'] / 'c.npz', '--classes',
                                 '0', '3'))
    no_tokenizer = files['root'] / 'no_tokenizer.py'
    no_tokenizer.write_text(f'_base_ = [{files["config"]!r}]\n'
                            'tokenizer = None\n')
    args = sample_args(files, files['root'] / 't.npz')[:-4]
    with pytest.raises(ValueError, match='--tokenizer-config'):
        tool['main']([str(no_tokenizer)] + args[1:])
    assert not (files['root'] / 'c.parts').exists()
