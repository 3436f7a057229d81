"""The FSDP configs of issue 22 (item 3): each is its DDP parent plus
exactly ``model_wrapper_cfg`` (a ``FullyShardWrapper``), and the plan of
``fully_shard`` on its meta-built model finds the blocks of the paper's
architecture; VAR-d30 has VAR's parameter count. (tests/test_configs.py
builds every config on the meta device as well.)"""
import functools
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.utils import import_modules_from_strings

from _helpers import REPO_ROOT, flatten

TOKENUNIFY = ('projects/TokenUnify/configs/tokenunify-curriculum_voxel-'
              '4x16x16_emmamba-huge_8xb20-100k_mec-16x160x160')
TITOK = 'configs/titok/titok_vq-4k_l32-stage2_8xb32-500k_in1k-256'
VAR_D30 = 'configs/var/var_msrq-4k_d30_8xb128-350e_in1k-256'
#: FSDP config -> its DDP parent (written here, not read from ``_base_``)
PARENTS = {f'{parent}_fsdp': parent
           for parent in (TOKENUNIFY, TITOK, VAR_D30)}
#: VAR's build_vae_var(depth=30) counted on VAR's code (the d30 row of
#: RELEASED in tests/test_tools_var_converter.py, VAR's "2.0B")
VAR_D30_PARAMETERS = 2_010_020_356


@functools.lru_cache(maxsize=None)
def load(name):
    cfg = Config.fromfile(osp.join(REPO_ROOT, name + '.py'))
    return cfg


@functools.lru_cache(maxsize=None)
def meta_model(name):
    import vistok.models  # noqa: F401
    from vistok.registry import MODELS
    cfg = load(name)
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    with DefaultScope.overwrite_default_scope('vistok'), \
            torch.device('meta'):
        return MODELS.build(cfg.model)


@pytest.mark.parametrize('name', sorted(PARENTS))
def test_fsdp_config_is_its_parent_plus_the_wrapper(name):
    child = flatten(load(name).to_dict())
    parent = flatten(load(PARENTS[name]).to_dict())
    # the wrapper's options are flattened leaves of model_wrapper_cfg
    added = {k for k in child if k not in parent}
    assert all(k.startswith('model_wrapper_cfg.') for k in added), added
    assert child['model_wrapper_cfg.type'] == 'FullyShardWrapper'
    assert child['model_wrapper_cfg.activation_checkpointing'] is True
    assert not any(k.startswith('model_wrapper_cfg') for k in parent)
    changed = {k for k in parent if child[k] != parent[k]}
    # FSDP refuses fp16 loss scaling: TiTok's AmpOptimWrapper becomes
    # bfloat16 autocast (the config's header says why)
    assert changed == (PRECISION_SWITCH if name == TITOK + '_fsdp' else
                       set()), changed


PRECISION_SWITCH = {f'optim_wrapper.{part}.{key}'
                    for part in ('generator', 'discriminator')
                    for key in ('type', 'dtype')}


def test_titok_fsdp_switches_fp16_scaling_to_bf16_autocast():
    child = load(TITOK + '_fsdp')
    for part in ('generator', 'discriminator'):
        assert child.optim_wrapper[part].type == 'AutocastOptimWrapper'
        assert child.optim_wrapper[part].dtype == 'bfloat16'
    assert child.model_wrapper_cfg.param_dtype == 'bfloat16'


def test_fsdp_wrapper_options_are_accepted_by_the_wrapper():
    """Every key of each FSDP config's wrapper is an argument of
    ``FullyShardWrapper`` and its dtypes are ones it knows."""
    import inspect

    from vistok.engine.fsdp import DTYPES, FullyShardWrapper
    known = set(inspect.signature(FullyShardWrapper).parameters)
    for name in PARENTS:
        options = dict(load(name).model_wrapper_cfg)
        options.pop('type')
        assert set(options) <= known, name
        for key in ('param_dtype', 'reduce_dtype'):
            assert options.get(key) in (None, *DTYPES), (name, key)


def test_var_d30_has_vars_parameter_count_and_shape():
    model = meta_model(VAR_D30)
    assert sum(p.numel() for p in model.parameters()) == VAR_D30_PARAMETERS
    block = model.blocks[0]
    assert (len(model.blocks), model.pos_1LC.shape[-1]) == (30, 64 * 30)
    assert block.attn.num_heads == 30
    header = open(osp.join(REPO_ROOT, VAR_D30 + '.py')).read()
    assert f'{VAR_D30_PARAMETERS:,} parameters' in header
    assert load(VAR_D30).train_dataloader.batch_size == 128


def test_plan_of_emmamba_huge_shards_its_eight_mamba_layers():
    from vistok.engine.fsdp import plan_fully_shard
    model = meta_model(TOKENUNIFY + '_fsdp')
    plan = plan_fully_shard(model)
    layers = [n for n, m in model.named_modules()
              if type(m).__name__ == 'EMMambaLayer']
    assert len(layers) == 8  # depths (2, 2, 2, 2)
    # and the decoder's MONAI blocks: 5 skip blocks, 4 up blocks, decoder1
    monai = [n for n, m in model.named_modules()
             if type(m).__name__ in ('UnetrBasicBlock', 'UnetrUpBlock')]
    assert len(monai) == 10
    assert sorted(plan.blocks) == sorted(layers + monai)
    assert plan.parts == ['backbone', 'next_token_head']
    assert (plan.replicated, plan.frozen, plan.root) == ([], [], False)


def test_plan_of_titok_l32_stage2_shards_decoder_gan_and_ema():
    from vistok.engine.fsdp import plan_fully_shard
    plan = plan_fully_shard(meta_model(TITOK + '_fsdp'))
    decoder = [b for b in plan.blocks if b.startswith('decoder.blocks.')]
    assert len(decoder) == 24  # TiTok-L: 24 layers
    assert {b.split('.')[0] for b in plan.blocks} == {'decoder',
                                                      'pixel_decoder'}
    assert 'discriminator' in plan.parts
    assert plan.ema_parts == [f'ema.{p}' for p in plan.parts
                              if p != 'discriminator']
    assert plan.ema_blocks == [f'ema.{b}' for b in plan.blocks]
    assert plan.frozen == ['encoder', 'quantizer']
    assert plan.replicated == []  # the quantizer is frozen in stage 2


def test_plan_of_var_d30_shards_30_blocks_and_itself():
    from vistok.engine.fsdp import plan_fully_shard
    model = meta_model(VAR_D30 + '_fsdp')
    plan = plan_fully_shard(model)
    assert plan.blocks == [f'blocks.{k}' for k in range(29, -1, -1)]
    assert {type(model.get_submodule(b)).__name__
            for b in plan.blocks} == {'AdaLNSelfAttn'}
    # VAR's position embeddings live on the model: it is sharded last
    assert plan.root_params == ['pos_start', 'pos_1LC'] and plan.root
    assert plan.sharded_modules()[-1] == ''
