"""VARGenerator: official parameter counts, block-causal attention, the KV
cache against teacher forcing, guidance, seeds, parallel branch heads, the
frozen quantizer's weights, overfitting a tiny token set, and the network
living in ``vistok.models.backbones`` under VAR's parameter names."""
import pytest
import torch
from timm.layers import DropPath as TimmDropPath

from _helpers import torch_threads
from vistok.models.backbones import (
    VARFFN,
    AdaLNBeforeHead,
    AdaLNSelfAttn,
    VARSelfAttention,
)
from vistok.models.backbones.transformer import DropPath
from vistok.models.generators.sampling import TokenSampler
from vistok.models.generators.var import VARGenerator
from vistok.models.quantizers.multiscale import MultiScaleResidualQuantizer
from vistok.registry import QUANTIZERS
from vistok.utils.weights import MissingWeightsError

SCALES = (1, 2, 3)
VQ = dict(type='VectorQuantizer', codebook_size=16, embed_dim=4,
          use_l2_norm=True)
MULTISCALE = dict(type='MultiScaleResidualQuantizer', scales=SCALES,
                  num_phi=2, quantizer=VQ)
IMAGEFOLDER_SCALES = (1, 1, 2, 3, 3, 4, 5, 6, 8, 11)
GREEDY = TokenSampler(temperature=0)


def quantizer_cfg(num_branches):
    if num_branches == 1:
        return MULTISCALE
    return dict(type='ProductQuantizer', num_branches=num_branches,
                quantizer=MULTISCALE)


def tiny_var(num_branches=1, **options):
    """A tiny VAR over scales (1, 2, 3) and 16 codes, with gates and head
    initialised large enough that every block matters."""
    torch.manual_seed(0)
    kwargs = dict(quantizer=quantizer_cfg(num_branches), patch_nums=SCALES,
                  num_branches=num_branches, num_classes=4, depth=2,
                  embed_dim=32, num_heads=2, drop_path_rate=0.0,
                  class_dropout_prob=0.0, init_adaln_gamma=0.5, init_head=1.0)
    kwargs.update(options)
    return VARGenerator(**kwargs).eval()


def random_maps(model, batch, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, model.vocab_size, (batch, *shape),
                      generator=generator) for shape in model.token_shape
    ]


def as_sequence(maps):
    return torch.cat([m.reshape(m.shape[0], -1) for m in maps], dim=1)


def meta_count(**options):
    with torch.device('meta'):
        model = VARGenerator(**options)
    return sum(p.numel() for p in model.parameters()), model


def test_parameter_counts_equal_the_official_architectures():
    # VAR-d16 / VAR-d17 with VAR's tokenizer (680 positions, 32 channels,
    # 4096 codes): 310,283,520 and 371,191,905 are the counts of VAR's own
    # code (tests/test_tools_var_converter.py builds the reference of
    # models/var.py at every released depth and compares key by key)
    assert meta_count(depth=16)[0] == 310_283_520
    assert meta_count(depth=17)[0] == 371_191_905
    # ImageFolder's generator: VAR-d17 over two product-quantized branches
    # (286 positions, 2 x 32 channels in, 2 x 4096 logits out)
    count, model = meta_count(
        depth=17, patch_nums=IMAGEFOLDER_SCALES, num_branches=2,
        quantizer=dict(type='ProductQuantizer', num_branches=2,
                       quantizer=dict(type='MultiScaleResidualQuantizer',
                                      scales=IMAGEFOLDER_SCALES)))
    assert count == 375_258_593
    assert model.num_positions == 286 and model.embed_dim == 1088
    assert tuple(model.head.weight.shape) == (2 * 4096, 1088)
    assert tuple(model.word_embed.weight.shape) == (1088, 64)
    # the 17 blocks alone: the "362M" of ImageFolder's README
    assert sum(p.numel() for p in model.blocks.parameters()) == 362_484_897
    # the frozen quantizer is neither a parameter nor in the state dict
    assert not any(k.startswith('quantizer.') for k in model.state_dict())


def test_shared_adaln_layout():
    count, model = meta_count(depth=16, shared_aln=True)
    dim = 1024
    per_block_linear = dim * 6 * dim + 6 * dim
    assert count == 310_283_520 - 16 * per_block_linear + \
        per_block_linear + 16 * 6 * dim
    assert tuple(model.blocks[0].ada_gss.shape) == (1, 1, 6, dim)


def test_block_causal_mask_over_scales():
    model = tiny_var()
    mask = model.attention_mask()
    scale_of = [k for k, side in enumerate(SCALES) for _ in range(side**2)]
    expected = torch.tensor([[scale_of[j] <= scale_of[i]
                              for j in range(len(scale_of))]
                             for i in range(len(scale_of))])
    assert torch.equal(mask, expected)
    # each position sees exactly the positions of its own and earlier scales
    assert mask.sum(1).tolist() == [1] + [5] * 4 + [14] * 9


@pytest.mark.parametrize('num_branches', [1, 2])
def test_teacher_forced_logits_ignore_later_scales(num_branches):
    model = tiny_var(num_branches)
    labels = torch.tensor([0, 3])
    maps = random_maps(model, 2)
    logits = model.logits(maps, labels)
    ends = torch.tensor([s * s for s in SCALES]).cumsum(0) * num_branches
    for k in range(len(SCALES)):
        changed = maps[:k] + random_maps(model, 2, seed=k + 1)[k:]
        other = model.logits(changed, labels)
        assert torch.equal(other[:, :ends[k]], logits[:, :ends[k]])
        if k + 1 < len(SCALES):  # the next scale does see scale k
            assert not torch.allclose(other[:, ends[k]:ends[k + 1]],
                                      logits[:, ends[k]:ends[k + 1]])
    # the flat sequence layout gives the same logits
    flat = torch.cat([m.flatten(1, 2) for m in maps], dim=1)
    assert torch.equal(model.logits(flat, labels), logits)


@pytest.mark.parametrize('num_branches', [1, 2])
def test_greedy_kv_cache_generation_is_the_conditional_argmax(num_branches):
    """Guidance disabled: every generated scale is the argmax of the
    teacher-forced (no cache) conditional logits given the earlier ones."""
    model = tiny_var(num_branches)
    labels = torch.tensor([0, 1, 2, 3])
    maps = model.generate(labels, GREEDY)
    assert [tuple(m.shape[1:]) for m in maps] == list(model.token_shape)
    logits = model.logits(maps, labels)
    assert torch.equal(logits.argmax(-1), as_sequence(maps))
    assert len({tuple(as_sequence(maps)[i].tolist()) for i in range(4)}) > 1
    # the maps are what the quantizer decodes
    latent = model.quantizer.decode(maps)
    assert tuple(latent.shape) == (4, 4 * num_branches, 3, 3)


def test_guided_generation_follows_the_linear_ramp():
    model = tiny_var()
    labels = torch.tensor([0, 1, 2, 3])
    sampler = TokenSampler(temperature=0, guidance_scale=4.0,
                           guidance_schedule='linear')
    maps = model.generate(labels, sampler)
    cond = model.logits(maps, labels)
    uncond = model.logits(maps, torch.full_like(labels, model.null_class))
    start = 0
    for k, side in enumerate(SCALES):
        scale = 1 + 3.0 * k / (len(SCALES) - 1)  # VAR: cfg 3 -> s = 1 + 3
        part = slice(start, start + side * side)
        guided = uncond[:, part] + scale * (cond[:, part] - uncond[:, part])
        assert torch.allclose(guided.argmax(-1).float(),
                              maps[k].flatten(1).float())
        start += side * side
    assert not all(
        torch.equal(a, b)
        for a, b in zip(maps, model.generate(labels, GREEDY)))


def test_unconditional_branch_runs_only_with_guidance():
    model = tiny_var()
    batches = []
    model.head.register_forward_hook(
        lambda module, args, out: batches.append(args[0].shape[0]))
    labels = torch.tensor([1, 2, 3])
    model.generate(labels, TokenSampler(guidance_scale=1.0))
    assert batches == [3] * len(SCALES)
    batches.clear()
    model.generate(labels, TokenSampler(guidance_scale=2.0))
    assert batches == [6] * len(SCALES)


def test_seed_reproduces_a_sample_and_top_k_1_is_greedy():
    model = tiny_var()
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    sampler = TokenSampler(temperature=1.0, guidance_scale=2.0,
                           guidance_schedule='linear')

    def draw(seed, chosen=sampler):
        return as_sequence(model.generate(
            labels, chosen, torch.Generator().manual_seed(seed)))

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))
    top1 = TokenSampler(temperature=1.0, top_k=1)
    assert torch.equal(draw(3, top1), as_sequence(model.generate(labels,
                                                                 GREEDY)))


def test_forward_modes_and_predict():
    model = tiny_var(2)
    maps = random_maps(model, 3)
    labels = torch.tensor([0, 1, 2])
    logits = model(maps, labels, mode='tensor')
    assert tuple(logits.shape) == (3, 14 * 2, 16)
    losses = model(maps, labels, mode='loss')
    assert set(losses) == {'loss_ce', 'acc'} and losses['loss_ce'] > 0
    samples = model(maps, labels, mode='predict')
    assert [s.gt_label.item() for s in samples] == [0, 1, 2]
    assert [tuple(t.shape) for t in samples[0].tokens] == [(1, 1, 2),
                                                           (2, 2, 2),
                                                           (3, 3, 2)]


def test_overfits_a_tiny_token_set():
    model = tiny_var(init_adaln_gamma=1e-5, init_head=0.02)  # VAR's init
    maps = random_maps(model, 4, seed=5)
    labels = torch.arange(4)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        loss = model(maps, labels, mode='loss')['loss_ce']
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    model.eval()
    # each class regenerates its memorised sample
    assert torch.equal(as_sequence(model.generate(labels, GREEDY)),
                       as_sequence(maps))


def test_quantizer_weights_come_from_the_tokenizer_checkpoint(tmp_path):
    torch.manual_seed(1)
    trained = QUANTIZERS.build(MULTISCALE)
    state = {f'quantizer.{k}': v for k, v in trained.state_dict().items()}
    state['encoder.conv_in.weight'] = torch.zeros(2)
    path = tmp_path / 'tokenizer.pth'
    torch.save(dict(state_dict=state), path)

    model = tiny_var(quantizer_weights=str(path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.init_weights()
    for name, tensor in trained.state_dict().items():
        assert torch.equal(model.quantizer.get_buffer(name), tensor)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad is False for p in model.parameters())
    assert not any('quantizer' in name for name, _ in
                   model.named_parameters())

    with pytest.raises(MissingWeightsError, match='model.quantizer_weights'):
        tiny_var().init_weights()
    with pytest.raises(KeyError, match='model.quantizer_prefix'):
        tiny_var(quantizer_weights=str(path),
                 quantizer_prefix='vq.').init_weights()


def test_bad_inputs_name_the_shapes():
    model = tiny_var()
    maps = random_maps(model, 2)
    with pytest.raises(ValueError, match=r'\(3, 3\)'):
        model.logits(maps[:2] + [maps[2][:, :2]], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r'\(B, 14\)'):
        model.logits(torch.zeros(2, 13, dtype=torch.long),
                     torch.tensor([0, 1]))
    with pytest.raises(ValueError, match='patch_nums'):
        tiny_var(patch_nums=(1, 2, 4))
    with pytest.raises(ValueError, match='num_branches'):
        tiny_var(num_branches=2, quantizer=MULTISCALE)
    with pytest.raises(TypeError, match='MultiScaleResidualQuantizer'):
        tiny_var(quantizer=VQ)
    with pytest.raises(ValueError, match='labels'):
        model.generate(torch.tensor([4 + 1]), GREEDY)
    assert isinstance(model.quantizer, MultiScaleResidualQuantizer)


def var_state_dict_layout(depth, dim, num_positions, first_l, num_scales,
                          latent_channels, num_classes, vocab_size,
                          num_heads, shared_aln=False):
    """Parameter names and shapes of VAR's released ``models/var.py`` and
    ``models/basic_var.py`` (class table renamed, see the class docstring),
    written out from VAR's code rather than read off the model."""
    layout = {
        'word_embed.weight': (dim, latent_channels),
        'word_embed.bias': (dim, ),
        'class_emb.embedding.weight': (num_classes + 1, dim),
        'pos_start': (1, first_l, dim),
        'pos_1LC': (1, num_positions, dim),
        'lvl_embed.weight': (num_scales, dim),
        'head_nm.ada_lin.1.weight': (2 * dim, dim),
        'head_nm.ada_lin.1.bias': (2 * dim, ),
        'head.weight': (vocab_size, dim),
        'head.bias': (vocab_size, ),
    }
    if shared_aln:
        layout['shared_ada_lin.1.weight'] = (6 * dim, dim)
        layout['shared_ada_lin.1.bias'] = (6 * dim, )
    for i in range(depth):
        block = {
            'attn.mat_qkv.weight': (3 * dim, dim),
            'attn.q_bias': (dim, ),
            'attn.v_bias': (dim, ),
            'attn.scale_mul_1H11': (1, num_heads, 1, 1),
            'attn.proj.weight': (dim, dim),
            'attn.proj.bias': (dim, ),
            'ffn.fc1.weight': (4 * dim, dim),
            'ffn.fc1.bias': (4 * dim, ),
            'ffn.fc2.weight': (dim, 4 * dim),
            'ffn.fc2.bias': (dim, ),
        }
        if shared_aln:
            block['ada_gss'] = (1, 1, 6, dim)
        else:
            block['ada_lin.1.weight'] = (6 * dim, dim)
            block['ada_lin.1.bias'] = (6 * dim, )
        layout.update({f'blocks.{i}.{k}': v for k, v in block.items()})
    return layout


@pytest.mark.parametrize('shared_aln', [False, True])
def test_state_dict_keeps_vars_parameter_names(shared_aln):
    """Checkpoint parity: moving the blocks to ``backbones`` kept every
    state-dict key and shape (tiny model, 14 positions, 3 scales)."""
    model = tiny_var(shared_aln=shared_aln)
    layout = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert layout == var_state_dict_layout(
        depth=2, dim=32, num_positions=14, first_l=1, num_scales=3,
        latent_channels=4, num_classes=4, vocab_size=16, num_heads=2,
        shared_aln=shared_aln)


def test_network_comes_from_the_backbones():
    """``generators/var.py`` holds the algorithm; the blocks are the
    ``vistok.models.backbones`` classes (one copy, reusable by plugins)."""
    model = tiny_var(drop_path_rate=0.2)
    assert all(type(b) is AdaLNSelfAttn for b in model.blocks)
    assert type(model.blocks[0].attn) is VARSelfAttention
    assert type(model.blocks[0].ffn) is VARFFN
    assert type(model.head_nm) is AdaLNBeforeHead
    # stochastic depth 0 .. 0.2 over the blocks; vistok's one DropPath
    assert isinstance(model.blocks[0].drop_path, torch.nn.Identity)
    assert type(model.blocks[1].drop_path) is DropPath
    assert model.blocks[1].drop_path.drop_prob == pytest.approx(0.2)


@pytest.mark.parametrize('drop_prob', [0.1, 0.3, 0.7])
def test_drop_path_is_bit_identical_to_timms(drop_prob):
    """VAR's released code uses timm's stochastic depth (scale the mask,
    then multiply); vistok's DropPath must give the very same training
    numerics from the same seed, and the identity in eval mode."""
    x = torch.randn(64, 9, 32)
    torch.manual_seed(0)
    expected = TimmDropPath(drop_prob).train()(x)
    torch.manual_seed(0)
    ours = DropPath(drop_prob).train()(x)
    assert torch.equal(ours, expected)
    assert torch.equal(DropPath(drop_prob).eval()(x), x)


class RecordingSampler(TokenSampler):
    """A greedy sampler that records every guidance step: ``(progress,
    cond, uncond, guided)``."""

    def __init__(self, **options):
        super().__init__(temperature=0, **options)
        self.steps = []

    def guide(self, cond, uncond, progress):
        guided = super().guide(cond, uncond, progress)
        self.steps.append((progress, cond, uncond, guided))
        return guided


@pytest.mark.parametrize('cfg', [0.5, 1.5, 4.0])
def test_linear_guidance_is_vars_cfg_ramp_at_every_scale(cfg):
    """VAR's ``autoregressive_infer_cfg`` (models/var.py): at scale ``si``
    of ``n``, ``t = cfg · si / (n - 1)`` and ``logits = (1 + t)·ℓ_c −
    t·ℓ_u``. vistok: the ``'linear'`` schedule with ``guidance_scale = 1 +
    cfg``, applied at ``progress = si / (n - 1)``."""
    model = tiny_var()
    sampler = RecordingSampler(guidance_scale=1.0 + cfg,
                               guidance_schedule='linear')
    with torch_threads(1):  # tiny tensors
        model.generate(torch.tensor([0, 1, 2]), sampler)
    num_scales = len(SCALES)
    assert [step[0] for step in sampler.steps] == [
        si / (num_scales - 1) for si in range(num_scales)]
    for si, (_, cond, uncond, guided) in enumerate(sampler.steps):
        t = cfg * si / (num_scales - 1)
        assert torch.allclose(guided, (1 + t) * cond - t * uncond,
                              rtol=1e-5, atol=1e-6)
        assert not torch.allclose(cond, uncond)  # guidance does something


def test_constant_guidance_is_the_same_scale_at_every_scale():
    """``'constant'``: ``ℓ_u + s·(ℓ_c − ℓ_u)`` at every scale (VAR's
    formula with a fixed ``t = s − 1``)."""
    model = tiny_var()
    sampler = RecordingSampler(guidance_scale=3.0,
                               guidance_schedule='constant')
    with torch_threads(1):  # tiny tensors
        model.generate(torch.tensor([0, 3]), sampler)
    assert len(sampler.steps) == len(SCALES)
    for _, cond, uncond, guided in sampler.steps:
        assert torch.allclose(guided, 3.0 * cond - 2.0 * uncond, rtol=1e-5,
                              atol=1e-6)
