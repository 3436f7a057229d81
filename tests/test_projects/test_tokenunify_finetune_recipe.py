"""TokenUnify fine-tuning configs as the two official MEC launchers (issue
18, item 2).

Official numbers (ydchen0806/TokenUnify, commit 221674f4), written out here:
``src/run_mamba_seg.sh`` runs ``main_finetune.py --batch_size=6
--epochs=400 --warmup_epochs=0 --blr=1e-4`` and ``src/run_MEC_seg.sh`` runs
``main_finetune2.py --batch_size=20 --epochs=800 --warmup_epochs=0
--blr=1e-5``, both on 8 GPUs (``--nproc_per_node=8``). Both scripts: lr =
blr x batch x GPUs / 256, ``--min_lr`` 1e-6, ``--clip_grad`` None, AdamW
(0.9, 0.95) wd 0.05 on timm's ``add_weight_decay`` groups; the fine-tuning
dataset has 10,000 samples (``Train.__len__``) split by DistributedSampler
and batched with ``drop_last=True``; ``util_mamba/lr_sched.py`` runs the
cosine per iteration over all epochs.
"""
import os
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from timm.optim import param_groups_weight_decay

from _helpers import REPO_ROOT

CONFIGS = osp.join(REPO_ROOT, 'projects/TokenUnify/configs')
RUN_MAMBA_SEG = ('emmamba-seg_affinity-3_emmamba-base_8xb6-400e_'
                 'mec-16x160x160.py')
RUN_MEC_SEG = ('emmamba-seg_affinity-3_emmamba-base_8xb20-800e_'
               'mec-16x160x160.py')
#: launcher config -> (GPUs, batch / GPU, epochs, blr) of the official script
LAUNCHERS = {RUN_MAMBA_SEG: (8, 6, 400, 1e-4), RUN_MEC_SEG: (8, 20, 800, 1e-5)}
OFFICIAL_MIN_LR, OFFICIAL_WD, SAMPLES_PER_EPOCH = 1e-6, 0.05, 10000
#: every real-data fine-tuning config (MEC, its pre-trained and LMC
#: variants, CREMI, AC3/4): they inherit the launcher recipe
REAL_DATA = sorted(
    name for name in os.listdir(CONFIGS)
    if name.startswith('emmamba-seg_') and '_emmamba-base_' in name)


def load(name):
    return Config.fromfile(osp.join(CONFIGS, name))


@pytest.mark.parametrize('name', sorted(LAUNCHERS))
def test_launcher_numbers_equal_the_official_scripts(name):
    gpus, batch, epochs, blr = LAUNCHERS[name]
    cfg = load(name)
    iterations = epochs * (SAMPLES_PER_EPOCH // gpus // batch)
    assert cfg.train_dataloader.batch_size == batch
    assert f'_{gpus}xb{batch}-{epochs}e_' in name
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(
        blr * gpus * batch / 256, rel=1e-12)
    assert cfg.train_cfg.max_iters == iterations
    (cosine, ) = cfg.param_scheduler
    assert (cosine.type, cosine.T_max, cosine.begin, cosine.end,
            cosine.eta_min, cosine.by_epoch) == ('CosineAnnealingLR',
                                                 iterations, 0, iterations,
                                                 OFFICIAL_MIN_LR, False)


def test_the_two_launchers_differ_only_in_batch_lr_and_length():
    def flat(node, prefix=''):
        if isinstance(node, dict):
            return {k: v for key, value in node.items()
                    for k, v in flat(value, f'{prefix}{key}.').items()}
        if isinstance(node, (list, tuple)) and any(
                isinstance(v, dict) for v in node):
            return {k: v for i, value in enumerate(node)
                    for k, v in flat(value, f'{prefix}{i}.').items()}
        return {prefix[:-1]: node}

    first, second = (flat(load(n).to_dict()) for n in LAUNCHERS)
    differ = {k for k in first.keys() | second.keys()
              if first.get(k) != second.get(k)}
    assert differ == {
        'batch_per_gpu', 'epochs', 'base_lr', 'max_iters',
        'train_dataloader.batch_size', 'optim_wrapper.optimizer.lr',
        'train_cfg.max_iters', 'param_scheduler.0.T_max',
        'param_scheduler.0.end'}


@pytest.mark.parametrize('name', REAL_DATA)
def test_real_data_configs_follow_the_official_loss_and_optimizer(name):
    cfg = load(name)
    assert 'clip_grad' not in cfg.optim_wrapper
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    assert cfg.optim_wrapper.optimizer.betas == (0.9, 0.95)
    assert cfg.optim_wrapper.optimizer.weight_decay == OFFICIAL_WD
    loss = cfg.model.affinity_loss
    assert loss.type == 'ClassBalancedMSELoss'
    assert not loss.get('per_channel', False)


def test_weight_decay_groups_equal_timm_add_weight_decay():
    """The launcher config's optimizer, built by mmengine on EMmamba-base
    (meta device), decays exactly the parameters timm's rule decays (the
    official ``optim_factory.add_weight_decay``: none on 1-D parameters and
    biases)."""
    import projects.TokenUnify.tokenunify  # noqa: F401
    import vistok.models  # noqa: F401
    from vistok.registry import MODELS
    cfg = load(RUN_MAMBA_SEG)
    with DefaultScope.overwrite_default_scope('vistok'), \
            torch.device('meta'):
        model = MODELS.build(cfg.model)
        optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    decay = {id(p): group['weight_decay'] for group in optimizer.param_groups
             for p in group['params']}
    expected = {id(p): group['weight_decay']
                for group in param_groups_weight_decay(model, OFFICIAL_WD)
                for p in group['params']}
    assert decay == expected
    assert {0.0, OFFICIAL_WD} == set(decay.values())
