"""ImageFolder end to end through its tiny CPU configs on the embedded
photos (random tiny timm ViTs; a random stand-in for the DINOv2 teacher
written by projects/ImageFolder/tools/random_vit_weights.py): the tokenizer's
loss falls with usage logged per scale and branch, its tokens export in the
layout the VAR config reads, the VAR learns them, and tools/sample.py draws
images that decode."""
import os.path as osp
import runpy

import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from _helpers import REPO_ROOT, load_train_config
from _helpers import train_config as train

CONFIGS = osp.join(REPO_ROOT, 'projects/ImageFolder/configs')
TOKENIZER = 'imagefolder_msvr3p2-64_vit-tiny_1xb8-300_skimage-64.py'
GENERATOR = 'var_msvr3p2-64_d2_1xb16-1k_skimage-tokens.py'
PAPER = 'imagefolder_msvr10p2-4k_dinov2-b_8xb128-200e_in1k-256.py'
VAR_D17 = 'var_msvr10p2-4k_d17_8xb96-350e_in1k-256.py'


def load_cfg(name, work_dir, iters, options):
    return load_train_config(osp.join(CONFIGS, name), work_dir, iters,
                             options)


def test_positions_and_token_layout_of_the_paper_configs():
    """286 positions x 2 ids per image for ImageFolder's scales (the
    README's 265 is a typo, issue 9), 680 for VAR's scales (ablation rows
    1-2); the VAR config's token shape is the tokenizer quantizer's."""
    from vistok.registry import MODELS, QUANTIZERS
    paper = Config.fromfile(osp.join(CONFIGS, PAPER))
    var = Config.fromfile(osp.join(CONFIGS, VAR_D17))
    row1 = Config.fromfile(osp.join(
        CONFIGS, 'ablation',
        'imagefolder_row1-msrq-var_dinov2-b_8xb128-200e_in1k-256.py'))
    assert var.model.quantizer == paper.model.quantizer  # one source
    with DefaultScope.overwrite_default_scope('vistok'), \
            torch.device('meta'):
        quantizer = QUANTIZERS.build(paper.model.quantizer.to_dict())
        generator = MODELS.build(var.model.to_dict())
    scales = quantizer.branches[0].scales
    assert sum(s * s for s in scales) == 286 == generator.num_positions
    assert generator.token_shape == tuple((s, s, 2) for s in scales)
    assert sum(s * s for s in row1.model.quantizer.quantizer.scales) == 680
    assert row1.model.quantizer.num_branches == 1


def test_tokenizer_export_var_and_sampling(tmp_path, imagefolder_teacher):
    from vistok.datasets import TokenShardDataset
    cfg = load_cfg(TOKENIZER, tmp_path / 'tok', 40, {
        'model.semantic_loss.teacher_weights_path': imagefolder_teacher,
        'model.adversarial_loss.start_iter': 20,
        'custom_hooks.0.interval': 20})
    runner, history = train(cfg)
    mse = history['loss_mse']
    assert mse[-5:].mean() < 0.7 * mse[:5].mean()
    assert 'loss_semantic' in history and 'loss_gan' in ' '.join(history)
    for branch in (0, 1):  # usage per scale and branch
        for scale in range(3):
            assert f'codebook/branch{branch}.scale{scale}.usage' in history
    checkpoint = str(tmp_path / 'tok' / 'iter_40.pth')
    config = osp.join(CONFIGS, TOKENIZER)
    # (inference needs no teacher: the semantic loss is training-only)
    export = runpy.run_path(osp.join(REPO_ROOT, 'tools/export_tokens.py'))
    manifest = export['main']([config, checkpoint, '--data', 'val', '--out',
                               str(tmp_path / 'tokens')])
    gen_cfg = Config.fromfile(osp.join(CONFIGS, GENERATOR))
    assert ([level['shape'] for level in manifest['levels']]
            == [[s, s, 2] for s in gen_cfg.scales])
    dataset = TokenShardDataset(str(tmp_path / 'tokens'), verify=True)
    assert len(dataset) == 18

    weights = str(tmp_path / 'tokenizer_ema.safetensors')
    runpy.run_path(osp.join(REPO_ROOT,
                            'tools/model_converters/export_safetensors.py'),
                   run_name='not_main')['main']([checkpoint, weights,
                                                 '--ema'])
    gen_cfg = load_cfg(GENERATOR, tmp_path / 'gen', 100, {
        'train_dataloader.dataset.data_root': str(tmp_path / 'tokens'),
        'model.quantizer_weights': weights})
    _, history = train(gen_cfg)
    ce = history['loss_ce']
    assert ce[-5:].mean() < 0.5 * ce[:5].mean()
    # it learns the 18 photos' tokens (teacher-forced accuracy)
    assert history['acc'][-5:].mean() > 0.5
    sample = runpy.run_path(osp.join(REPO_ROOT, 'tools/sample.py'))['main']
    out = str(tmp_path / 'samples.npz')
    sample([osp.join(CONFIGS, GENERATOR),
            str(tmp_path / 'gen' / 'iter_100.pth'), '--out', out,
            '--num-images', '4', '--tokenizer-checkpoint', checkpoint,
            '--tokenizer-config', config,
            '--cfg-options', f'model.quantizer_weights={weights}'])
    with np.load(out) as npz:
        assert npz['arr_0'].shape == (4, 64, 64, 3)
        assert npz['arr_1'].tolist() == [0, 1, 2, 3]
        assert npz['arr_0'].std() > 0  # decoded images, not a constant
