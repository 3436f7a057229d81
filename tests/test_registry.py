import logging

import mmengine.registry as mm
import pytest
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope

import vistok.registry as vr


def test_every_mmengine_root_registry_has_a_vistok_child():
    roots = {name: obj for name, obj in vars(mm).items()
             if isinstance(obj, mm.Registry) and obj.parent is None
             and obj.scope == 'mmengine'}
    assert len(roots) >= 23
    for name, root in roots.items():
        child = getattr(vr, name)
        assert child.parent is root, name
        assert child.scope == 'vistok'
        assert root._children['vistok'] is child
        for location in child._locations:  # locations name real modules
            __import__(location)


@pytest.mark.parametrize('name', ['QUANTIZERS', 'BACKBONES', 'HEADS', 'LOSSES',
                                  'DISCRIMINATORS'])
def test_family_registries_have_no_parent(name):
    registry = getattr(vr, name)
    assert registry.parent is None and registry.scope == 'vistok'


def test_unknown_type_names_registry_and_closest_names():
    with pytest.raises(KeyError) as err:
        vr.QUANTIZERS.build(dict(type='VectorQuantiser', codebook_size=4,
                                 embed_dim=2))
    msg = str(err.value)
    assert "QUANTIZERS" in msg and 'VectorQuantizer' in msg


def test_type_in_wrong_family_says_where_it_is():
    with pytest.raises(KeyError, match='ConvEncoder` is registered in '
                       'BACKBONES'):
        vr.QUANTIZERS.build(dict(type='ConvEncoder'))


def test_unknown_model_type_through_root_registry_suggests_names():
    with DefaultScope.overwrite_default_scope('vistok'):
        with pytest.raises(KeyError, match='MODELS.*AutoencoderTokenizer'):
            mm.MODELS.build(dict(type='AutoEncoderTokeniser'))


def test_contains_stays_boolean():
    assert 'VectorQuantizer' in vr.QUANTIZERS
    assert 'NoSuchThing' not in vr.QUANTIZERS


def test_building_runtime_parts_logs_no_scope_warning(caplog):
    logger = MMLogger.get_current_instance()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        with DefaultScope.overwrite_default_scope('vistok'):
            mm.HOOKS.build(dict(type='IterTimerHook'))
            mm.HOOKS.build(dict(type='CheckpointHook', interval=1))
            mm.OPTIM_WRAPPERS.build(dict(
                type='OptimWrapper',
                optimizer=mm.OPTIMIZERS.build(dict(
                    type='SGD', lr=0.1,
                    params=[__import__('torch').nn.Parameter(
                        __import__('torch').zeros(1))]))))
    finally:
        logger.removeHandler(handler)
    warnings = [r.getMessage() for r in records
                if r.levelno >= logging.WARNING]
    assert not warnings, warnings
    with DefaultScope.overwrite_default_scope('vistok'):
        hook = mm.HOOKS.build(dict(type='CheckpointHook', interval=1))
    from vistok.engine.hooks import CheckpointHook
    assert type(hook) is CheckpointHook


def test_list_modules_prints_every_family(capsys, repo_root):
    import runpy
    tool = runpy.run_path(f'{repo_root}/tools/analysis/list_modules.py')
    tool['main']([])
    out = capsys.readouterr().out
    for family in ('QUANTIZERS', 'BACKBONES', 'HEADS', 'LOSSES', 'MODELS',
                   'DATASETS', 'TRANSFORMS', 'METRICS', 'HOOKS'):
        assert family in out
    assert 'VectorQuantizer' in out and 'ProceduralShapesDataset' in out
