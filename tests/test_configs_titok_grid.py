"""TiTok's paper tables as configs (issue 20, item 9): the token-count x
model-size grid (Appendix Table 4(a)) and the 512 px tokenizers (Table 2).
Every new config differs from the config it is said to vary only in the keys
its row names; each grid cell is the size and token count its name says and
states the paper's rFID of that cell and its parameter count; the 512
configs are the 256 ones with every resolution-bearing value at 512.
(tests/test_configs.py builds every one of them on the meta device: the
first test checks it collects them.)"""
import copy
import functools
import glob
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from _helpers import REPO_ROOT, flatten

TITOK = osp.join(REPO_ROOT, 'configs', 'titok')
PRIMITIVE = 'titok_vq-4k_l32_8xb32-1m_in1k-256'
GRID_BASE = 'grid/titok_vq-1k_l32_8xb32-500k_in1k-256'

#: rFID of paper Appendix Table 4(a) (preliminary runs, codebook 1024;
#: ../shared/reference/paper_tables.md §4.5), written here independently
#: of the config headers
KS = (16, 32, 64, 96, 128, 192, 256)
GRID_RFID = {'S': (25.3, 16.2, 9.6, 6.9, 5.6, 4.3, 3.7),
             'B': (16.8, 9.7, 5.9, 4.7, 3.8, 3.2, 2.9),
             'L': (13.0, 6.6, 4.0, 3.4, 3.0, 2.6, 2.5)}
#: TiTok's ViT widths (1d-tokenizer modeling/modules/blocks.py, small /
#: base / large)
WIDTH = {'S': 512, 'B': 768, 'L': 1024}
GRID = {f'grid/titok_vq-1k_{s.lower()}{k}_8xb32-500k_in1k-256': (s, k)
        for s in 'SBL' for k in KS}

CELL_KEYS = {'size', 'num_latent_tokens', 'model.encoder.size',
             'model.encoder.num_latent_tokens', 'model.decoder.size',
             'model.decoder.num_latent_tokens'}
#: what has a resolution (list leaves compared after :func:`at_512`)
RESOLUTION_KEYS = {
    'image_size', 'model.encoder.img_size', 'model.decoder.img_size',
    'train_pipeline', 'test_pipeline', 'train_dataloader.dataset.pipeline',
    'val_dataloader.dataset.pipeline', 'test_dataloader.dataset.pipeline',
    'val_evaluator', 'test_evaluator', 'teacher_path', 'model.teacher_path'}
TOKENS = {'num_latent_tokens', 'model.encoder.num_latent_tokens',
          'model.decoder.num_latent_tokens'}
STAGE1_512 = RESOLUTION_KEYS | TOKENS | {
    'model.teacher.encoder.resolution', 'model.teacher.decoder.resolution'}
STAGE2_512 = RESOLUTION_KEYS | TOKENS | {
    'model.pixel_decoder.encoder.resolution',
    'model.pixel_decoder.decoder.resolution', 'stage1_checkpoint',
    'model.pretrained.stage1.checkpoint',
    'model.pretrained.pixel_parts.checkpoint'}

#: new config -> (the config it varies, written here independently of its
#: ``_base_``; the exact flattened keys that differ)
ROWS = {
    GRID_BASE: (PRIMITIVE, {'model.quantizer.codebook_size', 'max_iters',
                            'train_cfg.max_iters', 'param_scheduler'}),
    **{name: (GRID_BASE, CELL_KEYS - (
        set() if size != 'L' else {'size', 'model.encoder.size',
                                   'model.decoder.size'}) - (
        set() if k != 32 else TOKENS))
       for name, (size, k) in GRID.items() if name != GRID_BASE},
    'titok_vq-4k_l64_8xb32-1m_in1k-512': (PRIMITIVE, STAGE1_512),
    'titok_vq-4k_b128_8xb32-1m_in1k-512': (
        'titok_vq-4k_b64_8xb32-1m_in1k-256', STAGE1_512),
    'titok_vq-4k_l64-stage2_8xb32-500k_in1k-512': (
        'titok_vq-4k_l32-stage2_8xb32-500k_in1k-256', STAGE2_512),
    'titok_vq-4k_b128-stage2_8xb32-500k_in1k-512': (
        'titok_vq-4k_b64-stage2_8xb32-500k_in1k-256', STAGE2_512),
}
TEACHER_512 = 'checkpoints/maskgit-vqgan-imagenet-f16-512_vistok.pth'


@functools.lru_cache(maxsize=None)
def _load(name):
    return Config.fromfile(osp.join(TITOK, name + '.py'))


def load(name):
    return copy.deepcopy(_load(name))


def at_512(leaf):
    """A 256 px value at 512: every size 256 becomes 512, and so do the
    rFID reference name and crop protocol strings."""
    if isinstance(leaf, dict):
        return {k: at_512(v) for k, v in leaf.items()}
    if isinstance(leaf, (list, tuple)):
        return type(leaf)(at_512(v) for v in leaf)
    if leaf == 256 and isinstance(leaf, int):
        return 512
    if isinstance(leaf, str) and leaf.startswith(('imagenet-val-',
                                                  'resize-short-')):
        return leaf.replace('256', '512')
    return leaf


def header(name):
    with open(osp.join(TITOK, name + '.py')) as f:
        return f.read().split('_base_')[0]


def test_every_new_config_is_in_the_table_and_collected_by_test_configs():
    grid = {osp.relpath(p, TITOK)[:-3]
            for p in glob.glob(osp.join(TITOK, 'grid', '*.py'))}
    assert grid == set(GRID) and len(grid) == 21
    at512 = {osp.basename(p)[:-3]
             for p in glob.glob(osp.join(TITOK, '*512*.py'))}
    assert set(ROWS) == grid | at512 and len(at512) == 4
    from test_configs import CONFIGS
    assert {osp.join(TITOK, n + '.py') for n in ROWS} <= set(CONFIGS)


@pytest.mark.parametrize('name', sorted(ROWS))
def test_config_differs_from_its_parent_only_in_its_row_keys(name):
    parent, keys = ROWS[name]
    child = flatten(load(name).to_dict())
    base = flatten(load(parent).to_dict())
    differing = {k for k in set(child) | set(base)
                 if k not in child or k not in base or child[k] != base[k]}
    assert differing == keys, name
    if '512' in name:
        # the resolution-bearing values are the parent's at 512, except
        # the teacher file (another release: checked below)
        for key in RESOLUTION_KEYS - {'teacher_path', 'model.teacher_path'}:
            assert child[key] == at_512(base[key]), (name, key)


def test_grid_base_is_the_primitive_at_codebook_1024_and_500k_iterations():
    """Paper: preliminary runs with a 1024 codebook, batch 256 over 500k
    iterations (~100 epochs); the cosine ends where training ends."""
    cfg, primitive = load(GRID_BASE), load(PRIMITIVE)
    assert cfg.model.quantizer.codebook_size == 1024
    assert cfg.train_cfg.max_iters == cfg.max_iters == 500_000
    warmup, cosine = cfg.param_scheduler
    assert warmup == primitive.param_scheduler[0]
    assert cosine.end == 500_000
    assert dict(cosine, end=None) == dict(primitive.param_scheduler[1],
                                          end=None)
    assert cfg.num_gpus * cfg.train_dataloader.batch_size == 256


@pytest.mark.parametrize('name', sorted(GRID))
def test_grid_cell_is_what_its_name_says_and_states_the_paper_rfid(name):
    size, k = GRID[name]
    model = load(name).model
    for part in (model.encoder, model.decoder):
        assert (part.size, part.num_latent_tokens) == (size, k)
    assert model.quantizer.codebook_size == 1024
    rfid = GRID_RFID[size][KS.index(k)]
    assert f'rFID {rfid}' in header(name)
    assert f'TiTok-{size}-{k}' in header(name) or name == GRID_BASE


def stated_count(name):
    return int(re.search(r'([\d,]{9,}) parameters',
                         header(name).replace('\n# ', ' ')).group(1)
               .replace(',', ''))


def trained_count(name):
    import vistok.models  # noqa: F401
    from vistok.registry import MODELS
    with DefaultScope.overwrite_default_scope('vistok'), \
            torch.device('meta'):
        model = MODELS.build(load(name).model)
    return sum(p.numel() for part in model.generator_parts().values()
               for p in part.parameters())


@pytest.mark.parametrize('size', 'SBL')
def test_grid_parameter_counts_grow_by_three_width_vectors_per_token(size):
    """One meta build per size (K=16); every other cell's stated count is
    that plus, per extra token, TiTok's three width-d vectors: the
    encoder's latent token and latent position embedding and the decoder's
    latent position embedding."""
    first = f'grid/titok_vq-1k_{size.lower()}16_8xb32-500k_in1k-256'
    assert stated_count(first) == trained_count(first)
    for name, (cell_size, k) in GRID.items():
        if cell_size == size:
            assert stated_count(name) - stated_count(first) == (
                3 * WIDTH[size] * (k - 16)), name


@pytest.mark.parametrize('name', sorted(n for n in ROWS if '512' in n))
def test_512_config_files_point_at_512_weights(name):
    cfg = load(name)
    assert cfg.teacher_path == TEACHER_512
    assert cfg.model.teacher_path == TEACHER_512
    assert cfg.model.encoder.img_size == cfg.model.decoder.img_size == 512
    if 'stage2' in name:
        assert cfg.model.pretrained.pixel_parts.checkpoint == TEACHER_512
        stage1 = name.replace('-stage2', '').replace('500k', '1m')
        assert cfg.stage1_checkpoint.startswith(f'work_dirs/{stage1}/')
        assert osp.isfile(osp.join(TITOK, stage1 + '.py'))
    # 32 x 32 patches of 16: the 1024 proxy codes of MaskGIT's 512 VQGAN
    assert 512 // cfg.model.encoder.patch_size == 32
