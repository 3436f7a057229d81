import pytest
from mmengine.config import Config

from vistok.apis import apply_cli_options, enable_amp


def base_cfg(**extra):
    return Config(dict(
        optim_wrapper=dict(type='OptimWrapper',
                           optimizer=dict(type='Adam', lr=1e-3)),
        **extra))


@pytest.mark.parametrize('resume, load_from, want', [
    (None, None, (False, None)),
    ('auto', None, (True, None)),
    ('ckpt.pth', None, (True, 'ckpt.pth')),
])
def test_resume_options(resume, load_from, want):
    cfg = apply_cli_options(base_cfg(resume=False, load_from=None),
                            work_dir='wd', resume=resume)
    assert (cfg.resume, cfg.load_from) == want
    assert cfg.work_dir == 'wd' and cfg.launcher == 'none'


def test_default_work_dir_is_named_after_the_config(tmp_path):
    path = tmp_path / 'my_cfg.py'
    path.write_text('optim_wrapper = dict(optimizer=dict(type="SGD"))\n')
    cfg = apply_cli_options(Config.fromfile(str(path)))
    assert cfg.work_dir == './work_dirs/my_cfg'


def test_seed_deterministic_and_cfg_options():
    cfg = apply_cli_options(base_cfg(randomness=dict(seed=0)), seed=5,
                            deterministic=True,
                            cfg_options={'optim_wrapper.optimizer.lr': 0.5})
    assert cfg.randomness == dict(seed=5, deterministic=True)
    assert cfg.optim_wrapper.optimizer.lr == 0.5


def test_amp_switches_single_and_dict_wrappers_on_cpu():
    cfg = base_cfg()
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'AutocastOptimWrapper'
    gan = Config(dict(optim_wrapper=dict(
        constructor='MultiOptimWrapperConstructor',
        generator=dict(type='OptimWrapper', optimizer=dict(type='Adam')),
        discriminator=dict(optimizer=dict(type='Adam')))))
    enable_amp(gan)
    assert gan.optim_wrapper.generator.type == 'AutocastOptimWrapper'
    assert gan.optim_wrapper.discriminator.type == 'AutocastOptimWrapper'
    with pytest.raises(ValueError, match='no optim_wrapper'):
        enable_amp(Config(dict()))
    with pytest.raises(ValueError, match="cannot switch.*'Custom'"):
        enable_amp(Config(dict(optim_wrapper=dict(
            type='Custom', optimizer=dict(type='SGD')))))
