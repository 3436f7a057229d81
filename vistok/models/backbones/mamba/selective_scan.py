"""Selective scan: the input-dependent state-space recurrence (S6) of Mamba
(Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces", Alg. 2 and Eq. 2a-2b; discretisation as in mamba-ssm: zero-order hold
for ``A``, Euler for ``B``):

    Δ_t   = softplus(δ_t + δ_bias)            (or δ_t + δ_bias)
    h_t   = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t      (h_0 = 0)
    y_t   = ⟨C_t, h_t⟩ + D u_t,   out_t = y_t · silu(z_t)

per batch element and channel ``d``, with a state of ``N`` entries.
Layouts are mamba-ssm's ``selective_scan_fn``: ``u, delta, z`` ``(B, D, L)``
(channel-first sequences), ``A`` ``(D, N)``, input-dependent ``B, C``
``(B, N, L)`` or ``(B, G, N, L)`` (``G`` groups of ``D / G`` channels share
them), ``D, delta_bias`` ``(D,)``; the output is ``(B, D, L)`` in the dtype of
``u``, computed in at least float32.

The PyTorch path (:class:`SelectiveScan`) is a chunked scan with its own
backward pass:

* The sequence is cut into ``n`` chunks of ``chunk_size`` steps, and every
  step below updates all chunks at once, so the Python loops have
  ``chunk_size`` and ``n`` iterations, not ``L``. (1) Each chunk's last
  state is run up from a zero state. (2) A sequential pass over the chunk
  ends carries the true state into every chunk; the decay across a chunk is
  ``exp(A Σ_t Δ_t)``, the exponential of the log-space sum over that chunk
  only. (3) The recurrence runs through every chunk from its true entering
  state. Nothing is ever divided by a decay: the parallel form
  ``h_t = e^{S_t} Σ_s e^{-S_s} b_s`` with ``S = cumsum(ΔA)`` overflows after a
  few strongly decaying steps, whereas here decays are only multiplied and
  at worst underflow to their exact limit 0.
* The backward pass is the adjoint recurrence run in reverse with the same
  chunking, ``λ_t = C_t g_t + exp(Δ_{t+1} A) ⊙ λ_{t+1}``; then
  ``∂/∂(Δ_t B_t u_t) = λ_t`` and ``∂/∂(Δ_t A) = λ_t ⊙ exp(Δ_t A) ⊙ h_{t-1}``.
  The states are recomputed rather than stored, as in mamba-ssm's kernel.

:func:`selective_scan_reference` is the per-timestep recurrence (the
algorithm of mamba-ssm's ``selective_scan_ref``), used by tests and
``bench/selective_scan.py``.
"""
from typing import Optional

import torch
import torch.nn.functional as F

IMPLS = ('auto', 'torch', 'cuda')

_CUDA_KERNEL = {}


def _cuda_kernel():
    """mamba-ssm's ``selective_scan_fn``, or the import error (cached)."""
    if not _CUDA_KERNEL:
        try:
            from mamba_ssm.ops.selective_scan_interface import (
                selective_scan_fn,
            )
            _CUDA_KERNEL['fn'], _CUDA_KERNEL['error'] = selective_scan_fn, None
        except Exception as error:  # ImportError or a broken CUDA build
            _CUDA_KERNEL['fn'], _CUDA_KERNEL['error'] = None, error
    return _CUDA_KERNEL['fn'], _CUDA_KERNEL['error']


def _shape(tensor):
    return tuple(tensor.shape)


def check_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None):
    """Raise a ``ValueError`` naming the argument and shape at fault unless
    the layouts are those of :func:`selective_scan`."""
    if u.dim() != 3:
        raise ValueError(f'u must be (batch, dim, length), got shape '
                         f'{_shape(u)}')
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f'delta must have the shape of u {_shape(u)}, got '
                         f'{_shape(delta)}')
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f'A must be (dim, d_state) with dim={dim} (u is '
                         f'{_shape(u)}), got shape {_shape(A)}')
    d_state = A.shape[1]
    for name, tensor in (('B', B), ('C', C)):
        if tensor.dim() == 3:
            valid = _shape(tensor) == (batch, d_state, length)
        elif tensor.dim() == 4:
            valid = (tensor.shape[0] == batch
                     and _shape(tensor)[2:] == (d_state, length)
                     and dim % tensor.shape[1] == 0)
        else:
            valid = False
        if not valid:
            raise ValueError(
                f'{name} must be (batch, d_state, length) = '
                f'{(batch, d_state, length)} or (batch, groups, d_state, '
                f'length) with groups dividing dim={dim}, got shape '
                f'{_shape(tensor)}')
    groups = [t.shape[1] if t.dim() == 4 else 1 for t in (B, C)]
    if groups[0] != groups[1]:
        raise ValueError(f'B and C must have the same number of groups, got '
                         f'B {_shape(B)} and C {_shape(C)}')
    for name, tensor in (('D', D), ('delta_bias', delta_bias)):
        if tensor is not None and _shape(tensor) != (dim, ):
            raise ValueError(f'{name} must be (dim,) = ({dim},), got shape '
                             f'{_shape(tensor)}')
    if z is not None and z.shape != u.shape:
        raise ValueError(f'z must have the shape of u {_shape(u)}, got '
                         f'{_shape(z)}')


def _time_major(x, chunk_size):
    """``(..., L)`` → ``(chunk_size, n_chunks, ...)``, zero-padding ``L`` at
    the end to a multiple of ``chunk_size`` (padded steps have ``Δ = 0``:
    they carry the state unchanged and only follow the real ones)."""
    pad = -x.shape[-1] % chunk_size
    if pad:
        x = F.pad(x, (0, pad))
    x = x.unflatten(-1, (-1, chunk_size)).movedim((-1, -2), (0, 1))
    return x.contiguous()  # products with it are then laid out (T, n, ...)


def _sequence_major(x, length):
    """Inverse of :func:`_time_major`: ``(T, n, ...)`` → ``(..., L)``."""
    return x.movedim((0, 1), (-1, -2)).flatten(-2)[..., :length]


def _grouped(x, groups):
    """``(batch, dim, L)`` → ``(batch, groups, dim / groups, L)``."""
    return x.unflatten(1, (groups, -1))


def _chunk_decay(dt, A):
    """``exp(A Σ_t Δ_t)`` over the steps ``t`` of ``dt`` ``(T, n, b, G, H)``
    for each chunk: the decay across the chunk, ``(n, b, G, H, N)``, from its
    log-space sum (``≤ 0`` for ``Δ ≥ 0, A ≤ 0``: at worst it underflows to
    0)."""
    return torch.mul(dt.sum(0).unsqueeze(-1), A).exp_()


def _states(dt, dtu, A, B, C=None):
    """States of the recurrence in the chunked layout.

    ``dt`` and ``dtu`` (Δ and Δ·u) are ``(T, n, b, G, H)``, ``A`` ``(G, H, N)``
    and ``B``, ``C`` ``(T, n, b, G, N)`` for ``n`` chunks of ``T`` steps.
    Returns ``(decay, h, entering, y)``: ``decay`` the per-step factors
    ``exp(Δ A)`` and ``h`` the states, both ``(T, n, b, G, H, N)``,
    ``entering`` ``(n, b, G, H, N)`` the state before each chunk's first
    step, and ``y = ⟨C, h⟩`` ``(T, n, b, G, H)`` (``None`` without ``C``).
    Every loop step works on one step of all chunks, so each slice is reused
    while it is in cache.
    """
    steps, chunks = dt.shape[:2]
    decay = dt.new_empty(dt.shape + A.shape[-1:])
    h = torch.empty_like(decay)  # Δ B u first, then the states
    last = None  # set at t == 0
    for t in range(steps):  # (1) each chunk's last state from a zero state
        torch.mul(dt[t].unsqueeze(-1), A, out=decay[t]).exp_()
        torch.mul(dtu[t].unsqueeze(-1), B[t].unsqueeze(-2), out=h[t])
        last = h[0] if t == 0 else torch.addcmul(h[t], decay[t], last)
    across = _chunk_decay(dt, A)
    entering = torch.zeros_like(h[0])
    for c in range(1, chunks):  # (2) the true state entering chunk c
        torch.addcmul(
            last[c - 1], across[c - 1], entering[c - 1], out=entering[c])
    ys = []
    for t in range(steps):  # (3) the states from the entering ones
        h[t].addcmul_(decay[t], entering if t == 0 else h[t - 1])
        if C is not None:
            ys.append(torch.matmul(h[t], C[t].unsqueeze(-1)).squeeze(-1))
    return decay, h, entering, (torch.stack(ys) if C is not None else None)


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus, chunk_size):
    """Cast to the compute dtype and move everything to the chunked layout
    of :func:`_states`; returns a dict of the pieces both passes need."""
    dtype = torch.promote_types(u.dtype, torch.float32)
    B4 = B if B.dim() == 4 else B.unsqueeze(1)
    C4 = C if C.dim() == 4 else C.unsqueeze(1)
    groups = B4.shape[1]
    pre = delta.to(dtype)
    if delta_bias is not None:
        pre = pre + delta_bias.to(dtype).unsqueeze(-1)
    dt = F.softplus(pre) if delta_softplus else pre
    u = u.to(dtype)
    return dict(
        dtype=dtype,
        groups=groups,
        pre=pre,
        u=u,
        dt=dt,
        dt_tm=_time_major(_grouped(dt, groups), chunk_size),
        dtu_tm=_time_major(_grouped(dt * u, groups), chunk_size),
        A=A.to(dtype).unflatten(0, (groups, -1)),
        B_tm=_time_major(B4.to(dtype), chunk_size),
        C_tm=_time_major(C4.to(dtype), chunk_size))


class SelectiveScan(torch.autograd.Function):
    """Chunked selective scan with its own backward pass (see the module
    docstring); call it through :func:`selective_scan`."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                chunk_size):
        length = u.shape[-1]
        chunk_size = max(1, min(chunk_size, length))
        with torch.autocast(device_type=u.device.type, enabled=False):
            p = _prepare(u, delta, A, B, C, delta_bias, delta_softplus,
                         chunk_size)
            y = _states(p['dt_tm'], p['dtu_tm'], p['A'], p['B_tm'],
                        p['C_tm'])[3]
            y = _sequence_major(y, length).flatten(1, 2)
            if D is not None:
                y = y + D.to(p['dtype']).unsqueeze(-1) * p['u']
            out = y if z is None else y * F.silu(z.to(p['dtype']))
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, y)
        ctx.delta_softplus, ctx.chunk_size = delta_softplus, chunk_size
        return out.to(u.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        u, delta, A, B, C, D, z, delta_bias, y = ctx.saved_tensors
        length = u.shape[-1]
        with torch.autocast(device_type=u.device.type, enabled=False):
            p = _prepare(u, delta, A, B, C, delta_bias, ctx.delta_softplus,
                         ctx.chunk_size)
            dtype, groups = p['dtype'], p['groups']
            grad_out = grad_out.to(dtype)
            grad_z = None
            if z is not None:
                z = z.to(dtype)
                gate = torch.sigmoid(z)
                grad_z = grad_out * y * gate * (1 + z * (1 - gate))
                grad_out = grad_out * z * gate
            grad_D = grad_u = None
            if D is not None:
                grad_D = (grad_out * p['u']).sum((0, 2))
                grad_u = grad_out * D.to(dtype).unsqueeze(-1)

            decay, h, entering, _ = _states(p['dt_tm'], p['dtu_tm'], p['A'],
                                            p['B_tm'])
            g = _time_major(_grouped(grad_out, groups), ctx.chunk_size)
            grad_C = torch.matmul(g.unsqueeze(-2), h).squeeze(-2)

            # adjoint λ_t = C_t g_t + exp(Δ_{t+1} A) λ_{t+1}, as the forward:
            # each chunk's first adjoint from a zero end, then the adjoint
            # entering each chunk's end from the next chunk, then the scan
            lam = torch.mul(g.unsqueeze(-1), p['C_tm'].unsqueeze(-2))
            steps, chunks = lam.shape[:2]
            first = lam[-1]
            for t in range(steps - 2, -1, -1):
                first = torch.addcmul(lam[t], decay[t + 1], first)
            across = _chunk_decay(p['dt_tm'][1:], p['A'])  # steps 1..T-1
            entering_adj = torch.zeros_like(lam[0])
            for c in range(chunks - 2, -1, -1):
                torch.addcmul(
                    first[c + 1],
                    across[c + 1],
                    entering_adj[c + 1],
                    out=entering_adj[c]).mul_(decay[0, c + 1])
            lam[-1].add_(entering_adj)
            for t in range(steps - 2, -1, -1):
                lam[t].addcmul_(decay[t + 1], lam[t + 1])

            # ∂/∂(Δ_t A) = λ_t exp(Δ_t A) h_{t-1}, in the memory of `decay`
            grad_dA = decay.mul_(lam)
            grad_dA[1:].mul_(h[:-1])
            grad_dA[0].mul_(entering)
            del decay, h
            grad_A = (grad_dA * p['dt_tm'].unsqueeze(-1)).sum((0, 1, 2))
            grad_dt = grad_dA.mul_(p['A']).sum(-1)
            grad_B = torch.matmul(p['dtu_tm'].unsqueeze(-2), lam).squeeze(-2)
            grad_dtu = torch.matmul(lam, p['B_tm'].unsqueeze(-1)).squeeze(-1)
            del lam, grad_dA

            def to_sequence(x):
                return _sequence_major(x, length).flatten(1, 2)

            grad_dtu = to_sequence(grad_dtu)
            grad_dt = to_sequence(grad_dt) + grad_dtu * p['u']
            grad_u_scan = grad_dtu * p['dt']
            grad_u = grad_u_scan if grad_u is None else grad_u + grad_u_scan
            if ctx.delta_softplus:  # d softplus/dx as torch's (threshold 20)
                pre = p['pre']
                grad_dt = grad_dt * torch.where(pre > 20, 1.,
                                                torch.sigmoid(pre))
            grad_bias = (grad_dt.sum((0, 2))
                         if delta_bias is not None else None)
            grad_A = grad_A.flatten(0, 1)
            grad_B = _sequence_major(grad_B, length)
            grad_C = _sequence_major(grad_C, length)
            if B.dim() == 3:
                grad_B, grad_C = grad_B.squeeze(1), grad_C.squeeze(1)

        def cast(grad, like):
            return None if grad is None else grad.to(like.dtype)

        return (cast(grad_u, u), cast(grad_dt, delta), cast(grad_A, A),
                cast(grad_B, B), cast(grad_C, C), cast(grad_D, D),
                cast(grad_z, z), cast(grad_bias, delta_bias), None, None)


def selective_scan(u: torch.Tensor,
                   delta: torch.Tensor,
                   A: torch.Tensor,
                   B: torch.Tensor,
                   C: torch.Tensor,
                   D: Optional[torch.Tensor] = None,
                   z: Optional[torch.Tensor] = None,
                   delta_bias: Optional[torch.Tensor] = None,
                   delta_softplus: bool = False,
                   impl: str = 'auto',
                   chunk_size: int = 64) -> torch.Tensor:
    """The selective scan of the module docstring, with mamba-ssm's
    ``selective_scan_fn`` semantics and layouts.

    Args:
        u: inputs ``(B, D, L)``.
        delta: step sizes before ``delta_bias`` / softplus, ``(B, D, L)``.
        A: state matrix (diagonal per channel) ``(D, N)``, usually negative.
        B, C: input-dependent ``(B, N, L)`` or grouped ``(B, G, N, L)``.
        D: skip connection ``(D,)``; ``None`` for none.
        z: gate ``(B, D, L)``: the output is multiplied by ``silu(z)``.
        delta_bias: ``(D,)`` added to ``delta`` (before the softplus).
        delta_softplus: apply ``softplus`` to ``delta + delta_bias``.
        impl: ``'torch'`` (the chunked scan), ``'cuda'`` (mamba-ssm's kernel;
            CUDA tensors only) or ``'auto'`` (``'cuda'`` when ``mamba_ssm``
            imports and ``u`` is on a CUDA device, else ``'torch'``).
        chunk_size: steps per chunk of the torch path; any length works
            (the last chunk is padded).

    Returns:
        ``(B, D, L)`` in the dtype of ``u``.
    """
    if impl not in IMPLS:
        raise ValueError(f'impl must be one of {IMPLS}, got {impl!r}')
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f'chunk_size must be a positive int, got '
                         f'{chunk_size!r}')
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    if impl == 'auto':
        impl = 'cuda' if u.is_cuda and _cuda_kernel()[0] else 'torch'
    if impl == 'cuda':
        kernel, error = _cuda_kernel()
        if kernel is None:
            raise ImportError(
                "impl='cuda' needs mamba_ssm (pip install -e .[mamba] on a "
                f'CUDA machine); importing it failed: {error}')
        if not u.is_cuda:
            raise ValueError(f"impl='cuda' needs CUDA tensors, got u on "
                             f'{u.device}')
        return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias,
                               delta_softplus, chunk_size)


def selective_scan_reference(u: torch.Tensor,
                             delta: torch.Tensor,
                             A: torch.Tensor,
                             B: torch.Tensor,
                             C: torch.Tensor,
                             D: Optional[torch.Tensor] = None,
                             z: Optional[torch.Tensor] = None,
                             delta_bias: Optional[torch.Tensor] = None,
                             delta_softplus: bool = False) -> torch.Tensor:
    """The recurrence of the module docstring one time step at a time (the
    algorithm of mamba-ssm's ``selective_scan_ref``), differentiable through
    autograd. Same arguments and layouts as :func:`selective_scan`; computes
    in float64 when ``u`` is float64, else float32. Slow: for tests and
    benchmarks."""
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    dtype = torch.promote_types(u.dtype, torch.float32)
    u, delta, A = u.to(dtype), delta.to(dtype), A.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype).unsqueeze(-1)
    if delta_softplus:
        delta = F.softplus(delta)
    dim = A.shape[0]

    def per_channel(x):  # (b, N, L) or (b, G, N, L) → (b, D, N, L)
        x = x.to(dtype)
        if x.dim() == 3:
            return x.unsqueeze(1).expand(-1, dim, -1, -1)
        return x.repeat_interleave(dim // x.shape[1], dim=1)

    B, C = per_channel(B), per_channel(C)
    delta_A = torch.exp(torch.einsum('bdl,dn->bdln', delta, A))
    delta_B_u = torch.einsum('bdl,bdnl,bdl->bdln', delta, B, u)
    state = u.new_zeros(u.shape[0], dim, A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        state = delta_A[:, :, t] * state + delta_B_u[:, :, t]
        ys.append(torch.einsum('bdn,bdn->bd', state, C[..., t]))
    out = torch.stack(ys, dim=2)
    if D is not None:
        out = out + u * D.to(dtype).unsqueeze(-1)
    if z is not None:
        out = out * F.silu(z.to(dtype))
    return out.to(dtype_in)
