"""The memory planner (issue 22, item 4: vistok/engine/memory.py and
tools/analysis/estimate_memory.py): on a tiny tokenizer with a
discriminator and an EMA copy, its parameter / gradient / optimizer-state /
EMA / frozen bytes equal those measured on the real model after one real
training step (DDP), and follow the ``ceil(dim0 / N)`` shard rule under
FSDP; its meta-device activation count equals the same count on a real
CPU forward; the tool prints the table for a config."""
import math

import pytest
import torch
from mmengine.logging import MessageHub

from vistok.engine import memory
from vistok.engine.fsdp import plan_fully_shard

#: one G/D step with AdamW on the generator and SGD with momentum on the
#: discriminator (two different state rules)
OPTIM = dict(constructor='MultiPartOptimWrapperConstructor',
             generator=dict(optimizer=dict(type='AdamW', lr=1e-3)),
             discriminator=dict(optimizer=dict(type='SGD', lr=1e-2,
                                               momentum=0.9)))
MODEL = dict(
    type='AutoencoderTokenizer',
    encoder=dict(type='ConvEncoder', in_channels=3, ch=8, ch_mult=(1, 2),
                 num_res_blocks=1, attn_resolutions=(), resolution=16,
                 z_channels=4, num_groups=4),
    quantizer=dict(type='VectorQuantizer', codebook_size=16, embed_dim=4),
    decoder=dict(type='ConvDecoder', out_ch=3, ch=8, ch_mult=(1, 2),
                 num_res_blocks=1, attn_resolutions=(), resolution=16,
                 z_channels=4, num_groups=4),
    discriminator=dict(type='PatchGANDiscriminator', in_channels=3,
                       base_channels=8, num_layers=2, norm='group',
                       num_groups=4),
    adversarial_loss=dict(type='AdversarialLoss', loss_type='hinge',
                          adaptive_weight=False, generator_weight=0.5,
                          start_iter=0),
    frozen_parts=('encoder', ),
    ema=dict(decay=0.9))


def build(device='cpu'):
    from mmengine.registry import DefaultScope

    import vistok.models  # noqa: F401
    from vistok.registry import MODELS
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('vistok'), \
            torch.device(device):
        model = MODELS.build(MODEL)
    return model


def measured(model, optimizers):
    """Bytes of the real tensors: trainable parameters, their gradients,
    the optimizers' state, the EMA copy, the rest."""
    out = dict(params=0, grads=0, optimizer=0, ema=0, frozen=0)
    for name, p in model.named_parameters():
        size = p.numel() * p.element_size()
        if name.startswith('ema.'):
            out['ema'] += size
        elif p.requires_grad:
            out['params'] += size
            out['grads'] += p.grad.numel() * p.grad.element_size()
        else:
            out['frozen'] += size
    for name, b in model.named_buffers():
        out['ema' if name.startswith('ema.') else 'frozen'] += b.nbytes
    out['optimizer'] = sum(
        t.nbytes for opt in optimizers for state in opt.state.values()
        for t in state.values() if torch.is_tensor(t))
    return out


@pytest.fixture(scope='module')
def stepped():
    return _stepped()


def _stepped():
    """The real model after one real G/D training step (gradients kept)."""
    from mmengine.optim import OptimWrapperDict
    model = build().train()
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope

    import vistok.engine  # noqa: F401
    with DefaultScope.overwrite_default_scope('vistok'):
        wrapper = build_optim_wrapper(model, OPTIM)
    assert isinstance(wrapper, OptimWrapperDict)
    for w in wrapper.optim_wrappers.values():  # keep the gradients
        w.zero_grad = lambda **kwargs: None
    images = [torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
              for _ in range(2)]
    MessageHub.get_current_instance().update_info('iter', 0)
    model.train_step(dict(inputs=images), wrapper)
    return model, [w.optimizer for w in wrapper.optim_wrappers.values()]


def test_ddp_estimate_equals_the_real_model_after_one_step(stepped):
    model, optimizers = stepped
    meta = build('meta')
    estimate = memory.state_memory(
        meta, memory.build_optimizers(meta, OPTIM), 'ddp', 8)
    real = measured(model, optimizers)
    assert all(real[k] > 0 for k in real), real
    assert {k: getattr(estimate, k) for k in real} == real
    assert estimate.gathered == 0


def test_optimizer_state_rule_from_a_real_step():
    """AdamW: two fp32 moments per element and a step scalar; SGD with
    momentum: one buffer; plain SGD: none."""
    def rule(opt_type, **options):
        p = torch.nn.Parameter(torch.zeros(3))
        opt = opt_type([p], **options)
        return memory.state_bytes_rule(opt, opt.param_groups[0])
    assert rule(torch.optim.AdamW) == (8, 4)
    assert rule(torch.optim.Adam, amsgrad=True) == (12, 4)
    assert rule(torch.optim.SGD, lr=0.1, momentum=0.9) == (4, 0)
    assert rule(torch.optim.SGD, lr=0.1) == (0, 0)


def test_fsdp_estimate_follows_the_shard_rule(stepped):
    """N=2: each parameter of a sharded part (and its gradient, optimizer
    state and EMA copy) takes ceil(dim0 / 2) rows per rank; the replicated
    quantizer, the frozen encoder and buffers stay whole."""
    world = 2
    model, optimizers = stepped
    meta = build('meta')
    plan = plan_fully_shard(meta)
    assert plan.replicated == ['quantizer'] and plan.frozen == ['encoder']
    estimate = memory.state_memory(
        meta, memory.build_optimizers(meta, OPTIM), 'fsdp', world)

    def rows(p):
        return math.ceil(p.shape[0] / world) * (p[0].numel() if p.ndim
                                                else 1)

    def per_rank(name, p):
        top = name.split('.')[1 if name.startswith('ema.') else 0]
        return rows(p) if top in plan.parts else p.numel()
    sharded = {name: per_rank(name, p)
               for name, p in model.named_parameters()}
    assert any(sharded[n] < p.numel() for n, p in model.named_parameters())
    params = sum(4 * sharded[n] for n, p in model.named_parameters()
                 if p.requires_grad and not n.startswith('ema.'))
    ema = sum(4 * sharded[n] for n, _ in model.named_parameters()
              if n.startswith('ema.')) + sum(
        b.nbytes for n, b in model.named_buffers() if n.startswith('ema.'))
    by_id = {id(p): n for n, p in model.named_parameters()}
    optim = 0
    for opt in optimizers:
        for p, state in opt.state.items():
            for t in state.values():
                optim += (t.element_size() * sharded[by_id[id(p)]]
                          if t.numel() == p.numel() else t.nbytes)
    assert (estimate.params, estimate.grads, estimate.optimizer,
            estimate.ema) == (params, params, optim, ema)
    real = measured(model, optimizers)
    assert estimate.frozen == real['frozen']  # nothing frozen is sharded
    assert estimate.params < real['params']
    # the largest unit gathered twice plus its gradient (no param dtype)
    assert estimate.gathered > 0


def test_shard_numel_pads_dim0():
    assert memory.shard_numel((5, 3), 2) == 9  # ceil(5/2)=3 rows
    assert memory.shard_numel((8, 3), 8) == 3
    assert memory.shard_numel((3, ), 8) == 1
    assert memory.shard_numel((), 4) == 1


def test_meta_activation_count_equals_the_real_forward():
    """The same saved-tensor count on the meta model and on the real CPU
    model (same batch), with and without checkpointed blocks."""
    blocks = ['decoder.up.0', 'decoder.up.1']
    counts = []
    for device in ('meta', 'cpu'):
        model = build(device)
        names = {n for n, _ in model.named_modules()}
        assert set(blocks) <= names, sorted(names)[:40]
        counts.append(memory.activation_memory(model, 2, (3, 16, 16),
                                               blocks))
    meta, real = counts
    assert meta == real
    assert 0 < meta.checkpointed < meta.total


def test_tool_prints_both_strategies_for_a_config(capsys):
    import importlib.util
    import os.path as osp

    from _helpers import REPO_ROOT
    spec = importlib.util.spec_from_file_location(
        'estimate_memory',
        osp.join(REPO_ROOT, 'tools', 'analysis', 'estimate_memory.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rows = tool.main([osp.join(REPO_ROOT, 'tests', 'data', 'configs',
                               'tiny_vqgan.py'), '--gpus', '2',
                      '--gpu-memory', '1MiB', '--input-shape', '3', '32',
                      '32'])
    ddp, fsdp = rows
    assert fsdp['params'] < ddp['params'] and fsdp['gathered'] > 0
    assert not ddp['fits'] and ddp['total'] > 2**20
    assert '| ddp |' in capsys.readouterr().out
