"""``auto_scale_lr`` with ``rule='linear' | 'sqrt'`` on a built VistokRunner
(tiny demo tokenizer, no training): the optimizer's learning rates equal the
formulas written out here, the effective batch counting world size, per-GPU
batch and gradient accumulation; SeiT++'s ``blr · √bs / 8`` is the sqrt rule
with base 64."""
import math
import os.path as osp

import pytest
from mmengine.config import Config

from _helpers import REPO_ROOT
from vistok.apis import apply_cli_options, build_runner

TINY = osp.join(REPO_ROOT, 'tests/data/configs/tiny_vqvae.py')
TINY_GAN = osp.join(REPO_ROOT, 'tests/data/configs/tiny_vqgan.py')
BASE_LR = 1e-3  # the tiny configs' Adam lr


def scaled_runner(tmp_path, name, auto_scale_lr, config=TINY, batch=4,
                  counts=1, world_size=1):
    cfg = Config.fromfile(config)
    options = {'train_dataloader.batch_size': batch,
               'auto_scale_lr': auto_scale_lr}
    wrapper = cfg.optim_wrapper
    if 'optimizer' in wrapper:
        options['optim_wrapper.accumulative_counts'] = counts
    else:
        options.update({f'optim_wrapper.{part}.accumulative_counts': counts
                        for part in ('generator', 'discriminator')})
    apply_cli_options(cfg, work_dir=str(tmp_path / name),
                      cfg_options=options)
    cfg.experiment_name = name
    runner = build_runner(cfg)
    runner._world_size = world_size  # as if launched on that many ranks
    runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    runner.scale_lr(runner.optim_wrapper, runner.auto_scale_lr)
    return runner


def lrs(wrapper):
    return [g['lr'] for g in wrapper.optimizer.param_groups]


@pytest.mark.parametrize('rule,world_size,batch,counts', [
    ('linear', 1, 4, 1),
    ('linear', 2, 4, 3),
    ('sqrt', 1, 4, 1),
    ('sqrt', 4, 8, 2),
])
def test_lr_follows_the_rule(tmp_path, rule, world_size, batch, counts):
    runner = scaled_runner(
        tmp_path, f'{rule}{world_size}{batch}{counts}',
        dict(base_batch_size=64, rule=rule, enable=True), batch=batch,
        counts=counts, world_size=world_size)
    effective = world_size * batch * counts
    expected = (BASE_LR * effective / 64 if rule == 'linear' else
                BASE_LR * math.sqrt(effective) / 8)  # SeiT++: blr·√bs/8
    assert lrs(runner.optim_wrapper) == pytest.approx([expected], rel=1e-12)


def test_disabled_or_absent_leaves_the_lr(tmp_path):
    runner = scaled_runner(tmp_path, 'off', dict(base_batch_size=64,
                                                 rule='sqrt', enable=False))
    assert lrs(runner.optim_wrapper) == [BASE_LR]


def test_each_wrapper_of_a_gan_is_scaled(tmp_path):
    runner = scaled_runner(tmp_path, 'gan', dict(base_batch_size=2,
                                                 rule='sqrt', enable=True),
                           config=TINY_GAN, batch=4, counts=2)
    for part in ('generator', 'discriminator'):
        assert lrs(runner.optim_wrapper[part]) == pytest.approx(
            [BASE_LR * 2.0])  # √(4·2 / 2)


def test_bad_auto_scale_lr_is_refused_when_the_runner_is_built(tmp_path):
    with pytest.raises(ValueError, match='auto_scale_lr.rule'):
        scaled_runner(tmp_path, 'bad', dict(base_batch_size=64,
                                            rule='cubic', enable=True))
    with pytest.raises(KeyError, match='base_bs'):
        scaled_runner(tmp_path, 'typo', dict(base_bs=64, enable=True))
    with pytest.raises(ValueError, match='auto_scale_lr.base_batch_size'):
        scaled_runner(tmp_path, 'nobase', dict(rule='sqrt', enable=True))
