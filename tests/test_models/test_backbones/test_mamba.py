import math

import pytest
import torch
import torch.nn.functional as F

from vistok.models.backbones.mamba import (
    MambaMixer,
    causal_conv1d,
    deinterleave,
    interleave,
    selective_scan,
    selective_scan_reference,
)
from vistok.registry import BACKBONES

SCAN_ARGS = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')


def mamba_ssm_available():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception:
        return False
    return True


def scan_inputs(batch=2, dim=6, d_state=4, length=37, groups=None,
                with_D=True, with_z=True, with_bias=True,
                dtype=torch.float64, delta_scale=1.0, seed=0):
    """Random selective-scan inputs in mamba-ssm's layouts, as a dict of
    leaf tensors requiring gradients."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    bc_shape = ((batch, d_state, length) if groups is None else
                (batch, groups, d_state, length))
    inputs = dict(
        u=randn(batch, dim, length),
        delta=randn(batch, dim, length) * delta_scale,
        A=-torch.rand(dim, d_state, generator=g, dtype=dtype) - 0.1,
        B=randn(*bc_shape),
        C=randn(*bc_shape),
        D=randn(dim) if with_D else None,
        z=randn(batch, dim, length) if with_z else None,
        delta_bias=randn(dim) * 0.5 if with_bias else None)
    return {
        k: (v.requires_grad_() if v is not None else None)
        for k, v in inputs.items()
    }


def assert_relative(actual, expected, tol, name=''):
    """max |actual - expected| <= tol * max |expected| (and finite)."""
    assert torch.isfinite(actual).all(), name
    scale = expected.abs().max().item()
    error = (actual.double() - expected.double()).abs().max().item()
    assert error <= tol * scale, f'{name}: error {error} vs scale {scale}'


def values_and_grads(fn, inputs, seed=1, **kwargs):
    out = fn(**inputs, **kwargs)
    grad_out = torch.randn(
        out.shape, generator=torch.Generator().manual_seed(seed),
        dtype=torch.float64).to(out.dtype)
    leaves = [k for k in SCAN_ARGS if inputs[k] is not None]
    grads = torch.autograd.grad(out, [inputs[k] for k in leaves], grad_out)
    return out, dict(zip(leaves, grads))


# --- selective scan ---------------------------------------------------------
@pytest.mark.parametrize('options', [
    dict(delta_softplus=True, chunk_size=8),
    dict(delta_softplus=True, chunk_size=64),
    dict(delta_softplus=False, chunk_size=5, with_z=False, with_bias=False),
    dict(delta_softplus=True, chunk_size=1, with_D=False),
    dict(delta_softplus=True, chunk_size=16, groups=2, length=50),
    dict(delta_softplus=False, chunk_size=10, length=40, groups=3, dim=6),
])
def test_scan_matches_reference_float64(options):
    """Values and gradients w.r.t. every input equal the per-timestep
    recurrence, for chunk sizes below, at and above L, L not a multiple of
    the chunk size, with and without z / D / delta_bias / softplus, and for
    shared and grouped B, C."""
    options = dict(options)
    scan_kw = dict(
        delta_softplus=options.pop('delta_softplus'),
        chunk_size=options.pop('chunk_size'))
    inputs = scan_inputs(**options)
    out, grads = values_and_grads(
        selective_scan, inputs, impl='torch', **scan_kw)
    scan_kw.pop('chunk_size')
    ref, ref_grads = values_and_grads(selective_scan_reference, inputs,
                                      **scan_kw)
    assert out.shape == inputs['u'].shape and out.dtype == torch.float64
    assert_relative(out, ref, 1e-5, 'out')
    assert set(grads) == set(ref_grads)
    for name in grads:
        assert grads[name].shape == inputs[name].shape
        assert_relative(grads[name], ref_grads[name], 1e-5, name)


def test_scan_float32_matches_float64_reference():
    """The float32 torch path against the float64 recurrence."""
    inputs32 = scan_inputs(length=300, dim=8, dtype=torch.float32)
    inputs64 = {
        k: (v.detach().double().requires_grad_() if v is not None else None)
        for k, v in inputs32.items()
    }
    out, grads = values_and_grads(
        selective_scan, inputs32, delta_softplus=True, chunk_size=32)
    ref, ref_grads = values_and_grads(
        selective_scan_reference, inputs64, delta_softplus=True)
    assert out.dtype == torch.float32
    assert_relative(out, ref, 1e-5, 'out')
    for name in grads:
        assert grads[name].dtype == torch.float32
        assert_relative(grads[name], ref_grads[name], 1e-5, name)


def test_scan_gradcheck():
    """The hand-written backward against finite differences."""
    inputs = scan_inputs(batch=1, dim=4, d_state=3, length=11, groups=2)
    names = [k for k in SCAN_ARGS if inputs[k] is not None]

    def fn(*tensors):
        return selective_scan(
            **dict(zip(names, tensors)), delta_softplus=True, chunk_size=4)

    assert torch.autograd.gradcheck(fn, [inputs[k] for k in names])


def test_scan_long_strongly_decaying_sequence():
    """L=4096 with Δ·A down to about -50 per step: exp(-cumsum(ΔA)) (the
    parallel form without segment sums) is inf after a few steps, while the
    chunked scan stays finite and equals the recurrence; its backward is
    finite and equals the float64 chunked scan's."""
    inputs = scan_inputs(
        batch=1, dim=4, d_state=4, length=4096, dtype=torch.float32,
        delta_scale=3.0)
    with torch.no_grad():
        inputs['A'].mul_(16)
        inputs['delta_bias'].add_(2.0)
        dt = F.softplus(inputs['delta'] + inputs['delta_bias'][:, None])
        log_decay = dt[..., None] * inputs['A'][:, None]
        assert torch.isinf(torch.exp(-log_decay.cumsum(2))).any()
    out, grads = values_and_grads(
        selective_scan, inputs, delta_softplus=True, chunk_size=64)
    ref = selective_scan_reference(
        **{k: v.double() if v is not None else None
           for k, v in inputs.items()},
        delta_softplus=True)
    assert_relative(out, ref, 1e-5, 'out')
    inputs64 = {
        k: (v.detach().double().requires_grad_() if v is not None else None)
        for k, v in inputs.items()
    }
    _, grads64 = values_and_grads(
        selective_scan, inputs64, delta_softplus=True, chunk_size=64)
    for name in grads:
        assert_relative(grads[name], grads64[name], 1e-5, name)


def test_scan_half_precision_inputs_compute_in_float32():
    inputs = {
        k: (v.detach().bfloat16() if v is not None else None)
        for k, v in scan_inputs(dtype=torch.float32).items()
    }
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = selective_scan(**inputs, delta_softplus=True, chunk_size=8)
    ref = selective_scan_reference(
        **{k: v.float() if v is not None else None
           for k, v in inputs.items()},
        delta_softplus=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2**-7, atol=2**-7)


def test_scan_impl_dispatch_on_cpu():
    inputs = scan_inputs()
    auto = selective_scan(**inputs, delta_softplus=True, impl='auto')
    torch_path = selective_scan(**inputs, delta_softplus=True, impl='torch')
    assert torch.equal(auto, torch_path)
    with pytest.raises((ImportError, ValueError), match="impl='cuda' needs"):
        selective_scan(**inputs, impl='cuda')  # CPU tensors
    with pytest.raises(ValueError, match='impl must be one of'):
        selective_scan(**inputs, impl='triton')
    with pytest.raises(ValueError, match='chunk_size must be a positive int'):
        selective_scan(**inputs, chunk_size=0)


@pytest.mark.parametrize('name, bad_shape, message', [
    ('u', (2, 6), r'u must be \(batch, dim, length\), got shape \(2, 6\)'),
    ('delta', (2, 6, 36), r'delta must have the shape of u \(2, 6, 37\), '
     r'got \(2, 6, 36\)'),
    ('A', (5, 4), r'A must be \(dim, d_state\) with dim=6.*got shape '
     r'\(5, 4\)'),
    ('B', (2, 4, 36), r'B must be .*\(2, 4, 37\).*got shape \(2, 4, 36\)'),
    ('C', (2, 4, 4, 37), r'C must be .*groups dividing dim=6, got shape '
     r'\(2, 4, 4, 37\)'),
    ('D', (5, ), r'D must be \(dim,\) = \(6,\), got shape \(5,\)'),
    ('z', (2, 6, 38), r'z must have the shape of u \(2, 6, 37\), got '
     r'\(2, 6, 38\)'),
    ('delta_bias', (6, 1), r'delta_bias must be \(dim,\) = \(6,\), got '
     r'shape \(6, 1\)'),
])
def test_scan_bad_shapes(name, bad_shape, message):
    inputs = scan_inputs()
    inputs[name] = torch.zeros(bad_shape, dtype=torch.float64)
    for fn in (selective_scan, selective_scan_reference):
        with pytest.raises(ValueError, match=message):
            fn(**inputs)


def test_scan_groups_of_B_and_C_must_agree():
    inputs = scan_inputs(groups=2)
    inputs['C'] = inputs['C'][:, :1].detach()
    with pytest.raises(ValueError, match='same number of groups'):
        selective_scan(**inputs)


# --- causal conv1d ----------------------------------------------------------
def conv_loop(x, weight, bias, activation):
    """out[b, d, t] = act(bias[d] + Σ_k weight[d, k] x[b, d, t-K+1+k])."""
    kernel_size = weight.shape[1]
    out = torch.zeros_like(x)
    for t in range(x.shape[-1]):
        for k in range(kernel_size):
            s = t - kernel_size + 1 + k
            if s >= 0:
                out[..., t] += weight[:, k] * x[..., s]
    if bias is not None:
        out = out + bias[:, None]
    return F.silu(out) if activation == 'silu' else out


@pytest.mark.parametrize('activation, with_bias', [(None, True),
                                                   ('silu', True),
                                                   ('silu', False)])
def test_causal_conv1d_equals_loop(activation, with_bias):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 13, dtype=torch.float64)
    weight = torch.randn(5, 4, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64) if with_bias else None
    torch.testing.assert_close(
        causal_conv1d(x, weight, bias, activation),
        conv_loop(x, weight, bias, activation))


def test_causal_conv1d_is_causal():
    """The output at t does not change when inputs after t do, and its
    gradient w.r.t. later inputs is exactly zero."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 20, requires_grad=True)
    weight, bias = torch.randn(3, 4), torch.randn(3)
    out = causal_conv1d(x, weight, bias, 'silu', impl='torch')
    t = 9
    changed = x.detach().clone()
    changed[..., t + 1:] = torch.randn(1, 3, 20 - t - 1)
    out_changed = causal_conv1d(changed, weight, bias, 'silu')
    assert torch.equal(out[..., :t + 1], out_changed[..., :t + 1])
    assert not torch.equal(out[..., t + 1:], out_changed[..., t + 1:])
    grad, = torch.autograd.grad(out[..., t].sum(), x)
    assert torch.all(grad[..., t + 1:] == 0)
    assert torch.all(grad[..., t - 3:t + 1] != 0)


def test_causal_conv1d_bad_input():
    x = torch.zeros(2, 5, 13)
    with pytest.raises(ValueError, match=r'weight must be \(dim, '
                       r'kernel_size\) with dim=5.*got shape \(4, 4\)'):
        causal_conv1d(x, torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r'x must be \(batch, dim, length\), '
                       r'got shape \(5, 13\)'):
        causal_conv1d(x[0], torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r'bias must be \(dim,\) = \(5,\)'):
        causal_conv1d(x, torch.zeros(5, 4), torch.zeros(4))
    with pytest.raises(ValueError, match='activation must be one of'):
        causal_conv1d(x, torch.zeros(5, 4), activation='relu')
    with pytest.raises((ImportError, ValueError), match="impl='cuda' needs"):
        causal_conv1d(x, torch.zeros(5, 4), impl='cuda')  # CPU tensors


# --- CUDA kernels (GPU machines with mamba-ssm / causal-conv1d) -------------
@pytest.mark.skipif(
    not (torch.cuda.is_available() and mamba_ssm_available()),
    reason='needs CUDA and mamba_ssm')
def test_cuda_kernels_agree_with_torch_path():
    inputs = {
        k: (v.detach().float().cuda().requires_grad_()
            if v is not None else None)
        for k, v in scan_inputs(length=300, groups=2).items()
    }
    out_cuda, grads_cuda = values_and_grads(
        selective_scan, inputs, delta_softplus=True, impl='cuda')
    out_torch, grads_torch = values_and_grads(
        selective_scan, inputs, delta_softplus=True, impl='torch')
    assert_relative(out_cuda, out_torch, 1e-4, 'out')
    for name in grads_cuda:
        assert_relative(grads_cuda[name], grads_torch[name], 1e-3, name)
    x = torch.randn(2, 64, 300, device='cuda')
    weight, bias = torch.randn(64, 4, device='cuda'), torch.randn(
        64, device='cuda')
    torch.testing.assert_close(
        causal_conv1d(x, weight, bias, 'silu', impl='cuda'),
        causal_conv1d(x, weight, bias, 'silu', impl='torch'),
        rtol=1e-4,
        atol=1e-4)


# --- mixer ------------------------------------------------------------------
def mamba_layer_parameter_count(d_model, d_state=16, d_conv=4, expand=2):
    """mamba-ssm ``Mamba(d_model)`` (bias=False, conv_bias=True): in_proj,
    conv1d, x_proj, dt_proj, A_log, D, out_proj."""
    d_inner, dt_rank = expand * d_model, math.ceil(d_model / 16)
    per_direction = (
        d_inner * d_conv + d_inner  # conv1d (depthwise) + bias
        + d_inner * (dt_rank + 2 * d_state)  # x_proj
        + dt_rank * d_inner + d_inner  # dt_proj + bias
        + d_inner * d_state + d_inner)  # A_log, D
    shared = d_model * 2 * d_inner + d_inner * d_model  # in_proj, out_proj
    return shared, per_direction


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_mixer_parameter_counts_equal_mamba_ssm():
    shared, per_direction = mamba_layer_parameter_count(256)
    assert shared + per_direction == 437_760  # mamba_ssm Mamba(d_model=256)
    for directions in [('forward', ), ('forward', 'backward'),
                       ('forward', 'backward', 'inter_slice')]:
        with torch.device('meta'):
            mixer = BACKBONES.build(
                dict(type='MambaMixer', d_model=256, directions=directions))
        assert count(mixer) == shared + len(directions) * per_direction


def test_mixer_parameter_names_and_init():
    mixer = MambaMixer(
        16, d_state=8, directions=('forward', 'backward', 'inter_slice'))
    names = {name for name, _ in mixer.named_parameters()}
    for suffix in ('', '_b', '_s'):
        assert {
            f'conv1d{suffix}.weight', f'conv1d{suffix}.bias',
            f'x_proj{suffix}.weight', f'dt_proj{suffix}.weight',
            f'dt_proj{suffix}.bias', f'A{suffix}_log', f'D{suffix}'
        } <= names
        assert torch.equal(
            getattr(mixer, f'A{suffix}_log'),
            torch.arange(1, 9.).log().expand(32, 8))
        assert torch.equal(getattr(mixer, f'D{suffix}'), torch.ones(32))
        dt = F.softplus(getattr(mixer, f'dt_proj{suffix}').bias)
        assert dt.min() >= 0.001 * (1 - 1e-5)
        assert dt.max() <= 0.1 * (1 + 1e-5)
    assert mixer.A_log._no_weight_decay and mixer.D_s._no_weight_decay
    assert mixer.dt_rank == 1 and mixer.d_inner == 32


def reference_direction(mixer, xz, suffix):
    """One direction of SegMamba's ``mamba_inner_fn_no_out_proj`` with the
    reference recurrence: nn.Conv1d padded by d_conv-1 and cropped, x_proj
    and dt_proj as linear layers over ``(B L, C)`` rows."""
    length = xz.shape[-1]
    x, z = xz.chunk(2, dim=1)
    x = F.silu(getattr(mixer, f'conv1d{suffix}')(x)[..., :length])
    rows = x.transpose(1, 2).reshape(-1, mixer.d_inner)
    x_dbl = F.linear(rows, getattr(mixer, f'x_proj{suffix}').weight)
    dt, B, C = x_dbl.split([mixer.dt_rank, mixer.d_state, mixer.d_state], -1)
    dt_proj = getattr(mixer, f'dt_proj{suffix}')
    dt = F.linear(dt, dt_proj.weight)

    def to_channels(rows_):
        return rows_.reshape(x.shape[0], length, -1).transpose(1, 2)

    return selective_scan_reference(
        x,
        to_channels(dt),
        -torch.exp(getattr(mixer, f'A{suffix}_log')),
        to_channels(B),
        to_channels(C),
        getattr(mixer, f'D{suffix}'),
        z=z,
        delta_bias=dt_proj.bias,
        delta_softplus=True)


def reference_mixer(mixer, x, num_slices):
    """SegMamba "bimamba v3" forward, written with its own tensor ops:
    flip → scan → flip, chunk/stack/flatten → scan → reshape/permute."""
    batch, _, length = x.shape
    xz = F.linear(x.transpose(1, 2), mixer.in_proj.weight).transpose(1, 2)
    out = 0
    if 'forward' in mixer.directions:
        out = out + reference_direction(mixer, xz, '')
    if 'backward' in mixer.directions:
        out = out + reference_direction(mixer, xz.flip([-1]), '_b').flip([-1])
    if 'inter_slice' in mixer.directions:
        xz_s = torch.stack(xz.chunk(num_slices, dim=-1), dim=-1).flatten(-2)
        out_s = reference_direction(mixer, xz_s, '_s')
        out = out + out_s.reshape(batch, mixer.d_inner, length // num_slices,
                                  num_slices).permute(0, 1, 3, 2).flatten(-2)
    return F.linear(out.transpose(1, 2), mixer.out_proj.weight).transpose(1, 2)


@pytest.mark.parametrize('directions, num_slices', [
    (('forward', ), None),
    (('forward', 'backward'), None),
    (('forward', 'backward', 'inter_slice'), 5),
    (('inter_slice', ), 4),
])
def test_mixer_equals_direct_composition(directions, num_slices):
    """Values and gradients (input and every parameter) equal the direct
    composition with the reference recurrence."""
    torch.manual_seed(0)
    mixer = MambaMixer(
        12, d_state=4, directions=directions, num_slices=num_slices,
        impl='torch', chunk_size=8).double()
    x = torch.randn(2, 12, 40, dtype=torch.float64, requires_grad=True)
    leaves = [x] + list(mixer.parameters())
    out = mixer(x)
    ref = reference_mixer(mixer, x, num_slices)
    assert out.shape == x.shape
    assert_relative(out, ref, 1e-5, 'out')
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, grad_out)
    ref_grads = torch.autograd.grad(ref, leaves, grad_out)
    for (name, _), grad, ref_grad in zip([('x', x)] +
                                         list(mixer.named_parameters()),
                                         grads, ref_grads):
        assert_relative(grad, ref_grad, 1e-5, name)


def test_mixer_volume_input_slices_along_first_axis():
    """(B, C, D, H, W) is flattened z-slowest; with num_slices=None the
    inter-slice scan takes the D slices, i.e. it runs z-fastest."""
    volume = torch.randn(1, 3, 4, 2, 5)
    seq = volume.flatten(2)
    assert torch.equal(
        interleave(seq, 4), volume.permute(0, 1, 3, 4, 2).flatten(2))
    assert torch.equal(deinterleave(interleave(seq, 4), 4), seq)
    torch.manual_seed(0)
    auto = MambaMixer(
        8, d_state=4, directions=('forward', 'inter_slice'), impl='torch')
    explicit = MambaMixer(
        8, d_state=4, directions=('forward', 'inter_slice'), num_slices=4)
    explicit.load_state_dict(auto.state_dict())
    x = torch.randn(2, 8, 4, 3, 5)
    out = auto(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, explicit(x.flatten(2)).unflatten(
        2, (4, 3, 5)))


def test_mixer_bad_input():
    tri = ('forward', 'backward', 'inter_slice')
    with pytest.raises(ValueError, match=r'length 42 \(input shape '
                       r'\(1, 8, 42\)\) is not divisible by it'):
        MambaMixer(8, directions=tri, num_slices=5)(torch.zeros(1, 8, 42))
    with pytest.raises(ValueError, match='num_slices=5 equal chunks'):
        MambaMixer(8, directions=tri, num_slices=5)(torch.zeros(1, 8, 42))
    with pytest.raises(ValueError, match=r'at least 2 spatial axes; got '
                       r'input shape \(1, 8, 40\)'):
        MambaMixer(8, directions=tri)(torch.zeros(1, 8, 40))
    with pytest.raises(ValueError, match=r'expects \(B, d_model=8, '
                       r'\*spatial\), got shape \(1, 40, 8\)'):
        MambaMixer(8)(torch.zeros(1, 40, 8))
    with pytest.raises(ValueError, match="needs the 'inter_slice' direction"):
        MambaMixer(8, num_slices=4)
    with pytest.raises(ValueError, match='non-empty subset'):
        MambaMixer(8, directions=('forward', 'sideways'))
    with pytest.raises(ValueError, match='impl must be one of'):
        MambaMixer(8, impl='triton')
