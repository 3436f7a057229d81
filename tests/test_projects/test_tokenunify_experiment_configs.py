"""TokenUnify's experiments as configs (issue 19, items 2 and 4): every new
config builds on the meta device, differs from its parent only in the keys
its table row names, and the sequential recipe's stage 2 starts from stage
1's weights with a fresh optimizer and schedule."""
import copy
import functools
import glob
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import DefaultScope

from _helpers import REPO_ROOT, flatten

CFG_DIR = osp.join(REPO_ROOT, 'projects', 'TokenUnify', 'configs')
FT = 'emmamba-seg_affinity-3_emmamba-base_8xb6-400e_mec-16x160x160'
CUR = ('tokenunify-curriculum_voxel-4x16x16_emmamba-base_8xb20-100k_mec-'
       '16x160x160')
RND = 'tokenunify-random_voxel-4x16x16_emmamba-base_8xb20-100k_mec-16x160x160'
AR = ('tokenunify-autoregress_voxel-4x16x16_emmamba-base_8xb20-100k_mec-'
      '16x160x160')
S1 = ('sequential/tokenunify-sequential-stage1_voxel-4x16x16_emmamba-base_'
      '8xb40-100k_mec-16x160x160')
S2 = ('sequential/tokenunify-sequential-stage2_voxel-4x16x16_emmamba-base_'
      '8xb20-100k_mec-16x160x160')
TINY = ('tokenunify-curriculum_voxel-4x16x16_emmamba-tiny_1xb4-150_synthetic-'
        '16x32x32')

TASKS = ('model.tasks', 'custom_hooks')
LOAD = ('model.pretrained.select', 'model.pretrained.allow_missing')
PRETRAINED = ('model.pretrained', 'pretrained_checkpoint')
SCALED = ('model.backbone.arch', 'model.pretrained.checkpoint',
          'pretrained_checkpoint')

#: new config → (parent written here, independently of its ``_base_``;
#: the flattened key prefixes its row names)
ROWS = {
    AR: (CUR, TASKS),
    'ablation/tokenunify-next_voxel-4x16x16_emmamba-base_8xb20-100k_mec-'
    '16x160x160': (CUR, TASKS),
    'ablation/tokenunify-random-next_voxel-4x16x16_emmamba-base_8xb20-100k_'
    'mec-16x160x160': (CUR, TASKS),
    'ablation/tokenunify-random-nextall_voxel-4x16x16_emmamba-base_8xb20-'
    '100k_mec-16x160x160': (CUR, TASKS + ('model.head', )),
    **{f'ablation/{FT}_tokenunify-load-{part}': (f'{FT}_tokenunify', LOAD)
       for part in ('mamba', 'encoder', 'decoder', 'mamba-encoder')},
    **{FT.replace('mec', data) + '_tokenunify': (FT.replace('mec', data),
                                                 PRETRAINED)
       for data in ('cremi', 'ac34')},
    **{f'scaling/{FT.replace("base", size)}': (FT, ('model.backbone.arch', ))
       for size in ('small', 'mid', 'large', 'huge')},
    **{f'scaling/{FT.replace("base", size)}{suffix}': (FT + suffix, SCALED)
       for size in ('small', 'mid', 'large', 'huge')
       for suffix in ('_tokenunify', '_mae')},
    **{f'scaling/unetr-seg_affinity-3_unetr-{size}_8xb6-400e_mec-16x160x160':
       (FT, ('model.backbone', ))
       for size in ('100m', '200m', '500m', '1b')},
    **{f'scaling/unetr-seg_affinity-3_unetr-{size}_8xb6-400e_mec-16x160x160'
       f'{suffix}': (f'scaling/unetr-seg_affinity-3_unetr-{size}_8xb6-400e_'
                     'mec-16x160x160', PRETRAINED)
       for size in ('100m', '200m', '500m', '1b')
       for suffix in ('_tokenunify', '_mae', '_autoregress')},
    **{f'scaling/tokenunify-{task}_voxel-4x16x16_unetr-{size}_8xb20-100k_'
       'mec-16x160x160': (parent, ('model.backbone', ))
       for size in ('100m', '200m', '500m', '1b')
       for task, parent in (('curriculum', CUR), ('random', RND),
                            ('autoregress', AR))},
    S1: (RND, ('batch_per_gpu', 'train_dataloader.batch_size',
               'optim_wrapper.optimizer.lr')),
    S2: (AR, ('stage1_checkpoint', 'model.pretrained')),
}


@functools.lru_cache(maxsize=None)
def _load(name):
    return Config.fromfile(osp.join(CFG_DIR, name + '.py'))


def load(name):
    """The config ``name`` (a copy: callers may edit it)."""
    return copy.deepcopy(_load(name))


def test_the_table_covers_every_new_config_and_test_configs_collects_them():
    new = {osp.relpath(p, CFG_DIR)[:-3] for sub in ('ablation', 'scaling',
                                                  'sequential')
           for p in glob.glob(osp.join(CFG_DIR, sub, '*.py'))}
    assert new <= set(ROWS) and len(ROWS) == len(new) + 3
    from test_configs import CONFIGS
    assert {osp.join(CFG_DIR, n + '.py') for n in ROWS} <= set(CONFIGS)


@pytest.mark.parametrize('name', sorted(ROWS))
def test_config_differs_from_its_parent_only_in_its_row_keys(name):
    parent, prefixes = ROWS[name]
    child = flatten(load(name).to_dict())
    base = flatten(load(parent).to_dict())
    differing = {k for k in set(child) | set(base)
                 if k not in child or k not in base or child[k] != base[k]}
    for key in differing:
        assert key.startswith(prefixes), (name, key)
    for prefix in prefixes:
        assert any(k.startswith(prefix) for k in differing), (name, prefix)


UNETR_FT = sorted(n for n in ROWS if n.startswith('scaling/unetr-')
                  and n.endswith('mec-16x160x160'))


@pytest.mark.parametrize('name', UNETR_FT)
def test_unetr_config_builds_on_meta_with_the_count_its_comment_states(name):
    """(Every new config is built on the meta device by
    tests/test_configs.py, which collects them: see the first test.)"""
    import vistok.models  # noqa: F401
    from vistok.registry import MODELS
    with DefaultScope.overwrite_default_scope('vistok'), \
            torch.device('meta'):
        model = MODELS.build(load(name).model)
    assert type(model.backbone).__name__ == 'UNETR'
    with open(osp.join(CFG_DIR, name + '.py')) as f:
        stated = re.search(r'UNETR of ([\d,]+) parameters', f.read())
    count = sum(p.numel() for p in model.parameters())
    assert int(stated.group(1).replace(',', '')) == count


def test_sequential_stage_hyper_parameters_are_the_official_launchers():
    """run_mamba_mae.sh: 40/GPU, 1e-3 x 320 / 256; run_mamba_mae_AR.sh:
    20/GPU, 1e-3 x 160 / 256, next + next-all only."""
    stage1, stage2 = load(S1), load(S2)
    assert stage1.train_dataloader.batch_size == 40
    assert stage1.optim_wrapper.optimizer.lr == pytest.approx(1.25e-3)
    assert set(stage1.model.tasks) == {'random'}
    assert stage2.train_dataloader.batch_size == 20
    assert stage2.optim_wrapper.optimizer.lr == pytest.approx(6.25e-4)
    assert set(stage2.model.tasks) == {'next_token', 'next_all'}
    assert stage2.model.pretrained.checkpoint.startswith(
        f'work_dirs/{osp.basename(S1)}/')
    assert stage2.get('load_from') is None and not stage2.get('resume')


class _Stop(Exception):
    """Raised by a :class:`_Probe` to end a run after recording."""


class _Probe(Hook):
    """Records the weights, optimizer state and lr seen before iteration 0
    (then ends the run if ``stop``)."""

    def __init__(self, stop=False):
        self.seen, self.stop = None, stop

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter == 0:
            self.seen = dict(
                state={k: v.clone() for k, v in
                       runner.model.state_dict().items()},
                optim_state=dict(runner.optim_wrapper.optimizer.state),
                lr=runner.optim_wrapper.get_lr()['lr'][0])
            if self.stop:
                raise _Stop


def tiny(cfg, work_dir, iters):
    """The stage config on the tiny synthetic data (16x32x32 crops) with a
    tiny backbone (a 2-head, 32-wide UNETR: an EMmamba step takes seconds
    on CPU, and the backbone is irrelevant to what is loaded when),
    ``iters`` iterations and its cosine schedule shortened to them."""
    small = load(TINY)
    cfg.model.backbone = dict(type='UNETR', img_size=(16, 32, 32),
                              out_channels=1, feature_size=4, hidden_size=32,
                              mlp_dim=64, num_heads=2)
    cfg.train_dataloader = small.train_dataloader
    cfg.train_dataloader.batch_size = 1
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters)
    cfg.param_scheduler[0].update(T_max=iters, end=iters)
    cfg.default_hooks.checkpoint.interval = iters
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir = str(work_dir)
    return cfg


def test_stage2_starts_from_stage1_weights_with_a_fresh_optimizer(tmp_path):
    from vistok.apis import build_runner
    from vistok.utils.checkpoint import from_safe, load_checkpoint_file
    stage1 = tiny(load(S1), tmp_path / 'stage1', iters=1)
    runner1, probe1 = build_runner(stage1), _Probe()
    runner1.register_hook(probe1, 'LOWEST')
    runner1.train()
    ckpt = from_safe(load_checkpoint_file(
        str(tmp_path / 'stage1' / 'iter_1.pth')))
    trained = ckpt['state_dict']
    assert ckpt['optimizer']['state'], 'stage 1 has optimizer state'
    backbone = [k for k in trained if k.startswith('backbone.')]
    # not vacuous: an iteration moved stage 1 away from its initialisation
    # (which stage 2's own, same-seed initialisation would reproduce)
    assert any(not torch.equal(probe1.seen['state'][k], trained[k])
               for k in backbone)

    stage2 = tiny(load(S2), tmp_path / 'stage2', iters=1)
    stage2.model.pretrained.checkpoint = str(tmp_path / 'stage1' /
                                             'iter_1.pth')
    runner2, probe2 = build_runner(stage2), _Probe(stop=True)
    runner2.register_hook(probe2, 'LOWEST')
    with pytest.raises(_Stop):
        runner2.train()
    seen = probe2.seen
    assert backbone and all(k in seen['state'] for k in backbone)
    for key in backbone:
        assert torch.equal(seen['state'][key], trained[key]), key
    # fresh optimizer and schedule: no moments, lr = its own start (no
    # warm-up: the base lr 6.25e-4), not stage 1's (1.25e-3, cosine to 0)
    assert seen['optim_state'] == {}
    assert seen['lr'] == pytest.approx(6.25e-4)
    assert probe1.seen['lr'] == pytest.approx(1.25e-3)


def test_part_transfer_rows_load_exactly_their_parts():
    """Each row's ``select`` / ``allow_missing`` on a tiny pre-trainer's
    state dict (next-token head and all) loads exactly the modules of the
    release's ``--load_mode`` into a tiny segmentor, and nothing else."""
    import vistok.models  # noqa: F401
    from vistok.registry import MODELS
    from vistok.utils.partial_load import load_pretrained
    expected = {'mamba': {'encoder'}, 'encoder': {'skip_blocks'},
                'decoder': {'up_blocks', 'decoder1'},
                'mamba-encoder': {'encoder', 'skip_blocks'}}
    finetune = load('emmamba-seg_affinity-3_emmamba-tiny_1xb4-300_synthetic-'
                    '16x32x32')
    with DefaultScope.overwrite_default_scope('vistok'):
        state = MODELS.build(load(TINY).model).state_dict()
        segmentor = MODELS.build(finetune.model)
        for part, modules in expected.items():
            kwargs = dict(load(f'ablation/{FT}_tokenunify-load-{part}')
                          .model.pretrained)
            kwargs.pop('checkpoint')
            report = load_pretrained(segmentor, state, logger='silent',
                                     **kwargs)
            wanted = sorted(k for k in segmentor.state_dict()
                            if k.split('.')[1] in modules)
            assert report.loaded == wanted, part
