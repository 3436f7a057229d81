"""Vector quantization with a learned codebook (VQ-VAE, van den Oord et al.
2017, "Neural Discrete Representation Learning") and the tricks of the VQ
family, each a keyword option of one class: EMA codebook updates, the
rotation trick, dead-code restart, k-means init, a frozen codebook and
mixing towards an external frozen codebook (UniCode).
"""
import os
import os.path as osp
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file as load_safetensors

from vistok.models.utils.code_search import nearest_code
from vistok.registry import QUANTIZERS
from vistok.structures import QuantizerOutput
from vistok.utils.checkpoint import load_checkpoint_file
from vistok.utils.dist import all_reduce_sum_, broadcast_from_rank0_, get_rank
from .base import (
    BaseQuantizer,
    check_latent,
    code_space_projections,
    flatten_channels_last,
    straight_through,
    unflatten_channels_first,
    usage_stats,
)

GRADIENT_ESTIMATORS = ('straight_through', 'rotation_trick')
MIX_MODES = ('replace', 'recursive')
# EMA cluster size a code starts with (at construction, k-means init or a
# restart): "one vector per step", so the code equals its embedding sum.
INITIAL_CLUSTER_SIZE = 1.0


def sample_rows(num_rows: int, num_samples: int,
                device: torch.device) -> torch.Tensor:
    """``num_samples`` random row indices out of ``num_rows``: distinct when
    there are enough rows, drawn with replacement otherwise."""
    if num_rows >= num_samples:
        return torch.randperm(num_rows, device=device)[:num_samples]
    return torch.randint(num_rows, (num_samples, ), device=device)


def kmeans(vectors: torch.Tensor, num_clusters: int, num_iters: int,
           spherical: bool = False) -> torch.Tensor:
    """Lloyd's k-means on ``vectors`` ``(N, D)`` -> centroids
    ``(num_clusters, D)``, initialised from random vectors; an empty cluster
    keeps its centroid. ``spherical`` re-normalises the centroids after each
    step (for l2-normalised codes)."""
    centroids = vectors[sample_rows(len(vectors), num_clusters,
                                    vectors.device)]
    for _ in range(num_iters):
        assignment = nearest_code(vectors, centroids)
        counts = torch.bincount(assignment, minlength=num_clusters)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, vectors)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(-1)
        if spherical:
            centroids = F.normalize(centroids, dim=-1)
    return centroids


def rotation_trick(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Rotation-trick estimator (Fifty et al. 2024, "Restructuring Vector
    Quantization with the Rotation Trick") for rows of ``e``
    (encoder outputs) and ``q`` (their codes), both ``(N, D)``.

    The output is ``sg[(‖q‖/‖e‖) R] e`` with ``R`` the rotation taking the
    direction ``ê`` to ``q̂``, ``R = I - 2 r rᵀ + 2 q̂ êᵀ`` and
    ``r = (ê + q̂)/‖ê + q̂‖``; ``R`` and the scale are built from detached
    tensors, so the gradient w.r.t. ``e`` is ``(‖q‖/‖e‖) Rᵀ g``: it keeps the
    angle between the gradient and the code instead of copying it (the
    straight-through estimator's ``g``). ``R e`` is never materialised as a
    matrix. The value is replaced by ``q`` exactly, in the form
    ``sg[q] + (x - sg[x])``, so it is bit-identical to ``decode(indices)``.
    Math in fp32 even under autocast.
    """
    with torch.autocast(e.device.type, enabled=False):
        e, q = e.float(), q.float()
        with torch.no_grad():
            e_norm = e.norm(dim=-1, keepdim=True)
            q_norm = q.norm(dim=-1, keepdim=True)
            e_hat, q_hat = F.normalize(e, dim=-1), F.normalize(q, dim=-1)
            r = F.normalize(e_hat + q_hat, dim=-1)
            scale = q_norm / e_norm.clamp_min(torch.finfo(e.dtype).tiny)
        rotated = scale * (e - 2 * (e * r).sum(-1, keepdim=True) * r +
                           2 * (e * e_hat).sum(-1, keepdim=True) * q_hat)
        return q.detach() + (rotated - rotated.detach())


def _single_tensor(loaded, path: str) -> torch.Tensor:
    """The tensor stored in ``path``: the object itself or the only tensor
    of a dict."""
    if isinstance(loaded, torch.Tensor):
        return loaded
    if isinstance(loaded, dict) and len(loaded) == 1:
        (value, ) = loaded.values()
        if isinstance(value, torch.Tensor):
            return value
    keys = list(loaded) if isinstance(loaded, dict) else type(loaded).__name__
    raise ValueError(f'external codebook file {path!r} must hold one tensor '
                     f'(or a dict with exactly one tensor), got {keys}')


@QUANTIZERS.register_module()
class VectorQuantizer(BaseQuantizer):
    """Nearest-neighbour vector quantizer.

    Every position of ``z`` ``(B, C, *spatial)`` (any spatial rank) is a
    vector of the channel dim; it is replaced by its nearest code

    ``k = argmin_j ‖z - e_j‖² = argmin_j (‖z‖² - 2 z·e_j + ‖e_j‖²)``

    computed with a matmul in fp32 even under autocast. The training
    objective is VQ-VAE eq. 3 without the reconstruction term, each term
    already weighted:

    * ``loss_codebook = codebook_weight · ‖sg[z] - e‖²`` (mean squared),
      moves the codes towards the encoder outputs (left out when the codebook
      is frozen or EMA-updated: it would have no gradient);
    * ``loss_commitment = β · ‖z - sg[e]‖²``, keeps the encoder committed.

    Both are computed in the code space, i.e. after the in-projection and
    the l2 normalisation when those are enabled (the normalisation only with
    ``l2_norm_output``: see there). The gradient estimator
    (straight-through, VQ-VAE §3.1, or the rotation trick) is applied in the
    code space too, before the out-projection, so the in-projection receives
    the reconstruction gradient.

    ``forward(z, mask)`` takes an optional bool ``mask`` ``(B, *spatial)``,
    True for real tokens: padded positions still get indices and
    ``quantized`` values but are left out of the losses, the stats counts
    and every codebook update.

    Codebook updates (EMA, dead-code restart, k-means init) happen in
    training mode only, under ``no_grad``, in fp32, before the codes are
    gathered into ``quantized``: the assignment uses the codebook from before
    the update, ``quantized`` (and ``decode(indices)`` afterwards) the
    updated one. They are synchronised across ranks: the statistics are
    summed over ranks before the update, random choices (restart vectors,
    k-means centroids) are made on rank 0 and broadcast, so every rank keeps
    an identical codebook. Every rank must therefore run the training
    forward in lock-step (as DDP requires anyway); DDP's
    ``broadcast_buffers`` is not needed for this module.

    Args:
        codebook_size: number of codes ``K``.
        embed_dim: dimension ``D`` of a code.
        in_channels: channels ``C`` of the input. ``None`` means ``D``;
            otherwise ``C != D`` adds linear projections ``C -> D`` before the
            look-up and ``D -> C`` after it (a low-dimensional code space,
            the "factorized codes" of ViT-VQGAN, Yu et al. 2022).
        use_l2_norm: l2-normalise both ``z`` and the codes before the
            look-up and use the normalised vectors as codes, so the look-up
            is a cosine-similarity argmax ("l2-normalized codes" of
            ViT-VQGAN; used by TiTok, LlamaGen and VAR).
        l2_norm_output: with ``use_l2_norm``, whether the code out (the
            ``quantized`` value, :meth:`decode`, the losses, the codebook
            updates) is the l2-normalised codebook row (``True``, what
            ``None`` means with ``use_l2_norm=True``) or the raw one
            (``False``): the look-up stays a cosine argmax over normalised
            ``z`` and codes, but everything after it is Euclidean on the
            un-normalised ``z`` and codebook, as VAR's and ImageFolder's
            ``VectorQuantizer2`` with ``using_znorm=True`` (``quant.py``:
            argmax of normalised dot products, then the ``nn.Embedding``
            row). ``None`` follows ``use_l2_norm``; ``True`` without
            ``use_l2_norm`` is refused (the output is only normalised when
            the look-up is).
        commitment_weight: ``β`` of VQ-VAE eq. 3.
        codebook_weight: weight of the codebook term of VQ-VAE eq. 3.
        frozen_codebook: keep the codebook fixed (no gradient, no
            ``loss_codebook``, no updates).
        ema_decay: ``γ`` of the EMA codebook update (VQ-VAE appendix A.1;
            taming's and UniCode's ``EMAVectorQuantizer``, which use 0.99);
            ``None`` learns the codebook by gradient instead. Per step, with
            ``n_i`` the number of (unmasked, all-rank) vectors assigned to
            code ``i`` and ``s_i`` their sum: ``N_i ← γ N_i + (1-γ) n_i``,
            ``m_i ← γ m_i + (1-γ) s_i`` and ``e_i = m_i / Ñ_i``. The buffers
            ``ema_cluster_size`` (``N``) and ``ema_embed_sum`` (``m``) start
            at 1 and at the initial codes, so unused codes stay where they
            are (taming starts ``N`` at 0, which blows unused codes up by
            ``1/eps``). The codebook is then a buffer, not a parameter.
        ema_eps: Laplace smoothing of the cluster sizes, ``Ñ_i = (N_i + ε) /
            (Σ N + K ε) · Σ N`` (Sonnet's VQ-VAE-EMA, taming, UniCode: 1e-5).
        gradient_estimator: ``'straight_through'`` (VQ-VAE §3.1: the output
            gradient is copied to ``z``) or ``'rotation_trick'`` (Fifty et
            al. 2024; see :func:`rotation_trick`).
        restart_threshold: dead-code restart ("random restarts" of
            Jukebox, Dhariwal et al. 2020; SoundStream, Zeghidour et al.
            2021): a code whose EMA usage (vectors per step, summed over
            ranks) falls below this threshold is re-initialised from a
            random unmasked vector of rank 0's current batch, and its usage
            (and EMA statistics) restart as for a new code, usage at the
            threshold. ``None``: off. The unit depends on the batch size
            (Jukebox: 1 with decay 0.99).
        restart_decay: decay of the usage EMA.
        restart_interval: check for dead codes every this many training
            forwards (the count is the buffer ``restart_steps``).
        kmeans_init: on the first training forward, set the codes to k-means
            centroids of rank 0's (unmasked) batch vectors, broadcast to all
            ranks (Łańcucki et al. 2020, "Robust training of vector
            quantized bottleneck models"; lucidrains' ``kmeans_init``). The
            buffer ``kmeans_initialized`` records it, so a resumed run does
            not redo it.
        kmeans_iters: Lloyd iterations of the k-means init.
        use_external_codebook: add an external frozen codebook
            ``external_codebook`` ``(K, D)`` (a buffer, zeros until
            :meth:`load_external_codebook`) that the codebook is mixed
            towards with weight ``λ`` (UniCode, Zheng et al. 2024,
            "language-driven iterative training": the LLM's embedding table).
            ``λ`` lives in the buffer ``mix_weight`` (checkpointed) and is set
            from outside with :meth:`set_mix_weight`, e.g. ramped by a hook.
            Here ``λ = 0`` is the learned codebook and ``λ = 1`` the external
            one, as in the official code; the paper writes the mix the other
            way round, ``C' = λ C + (1 - λ) C_L`` with ``λ`` the EMA weight.
        external_codebook_path: a file (``torch.save`` or ``.safetensors``)
            holding the ``(K, D)`` external codebook in the code space;
            implies ``use_external_codebook``. Constructors never read files
            (DESIGN §6): :meth:`init_weights` loads it.
        mix_mode: how the mix is applied. ``'replace'`` (what the official
            UniCode code does): the codebook in use is
            ``(1 - λ) C + λ C_ext`` at every look-up, with ``C`` the learned
            (EMA or gradient) codebook, whose statistics the mix never
            touches. ``'recursive'`` (EMA only): each EMA update mixes and
            then re-syncs the EMA sums to the mixed codebook, so the external
            share compounds: after ``t`` steps it is
            ``1 - Π_{i≤t} (1 - λ_i)`` (ignoring the pull of the data); with a
            linear ramp ``λ_i = i / T`` that is ``≈ 1 - exp(-t² / 2T)``, e.g.
            ~92% external after 48 steps of a 480-step ramp (10% of it),
            where ``'replace'`` is at 10%. It is a different method, not a
            re-parametrisation.
    """

    def __init__(self,
                 codebook_size: int,
                 embed_dim: int,
                 in_channels: Optional[int] = None,
                 use_l2_norm: bool = False,
                 l2_norm_output: Optional[bool] = None,
                 commitment_weight: float = 0.25,
                 codebook_weight: float = 1.0,
                 frozen_codebook: bool = False,
                 ema_decay: Optional[float] = None,
                 ema_eps: float = 1e-5,
                 gradient_estimator: str = 'straight_through',
                 restart_threshold: Optional[float] = None,
                 restart_decay: float = 0.99,
                 restart_interval: int = 1,
                 kmeans_init: bool = False,
                 kmeans_iters: int = 10,
                 use_external_codebook: bool = False,
                 external_codebook_path: Optional[str] = None,
                 mix_mode: str = 'replace'):
        super().__init__(embed_dim if in_channels is None else in_channels)
        if l2_norm_output is None:
            l2_norm_output = use_l2_norm
        if l2_norm_output and not use_l2_norm:
            raise ValueError(
                'l2_norm_output=True needs use_l2_norm=True (normalised codes '
                'out only after a cosine look-up), got use_l2_norm=False')
        self._check_options(codebook_size, embed_dim, ema_decay, ema_eps,
                            gradient_estimator, restart_threshold,
                            restart_decay, restart_interval, kmeans_init,
                            kmeans_iters, frozen_codebook, mix_mode)
        self.embed_dim = embed_dim
        self.use_l2_norm = use_l2_norm
        self.l2_norm_output = bool(l2_norm_output)
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        self.frozen_codebook = frozen_codebook
        self.ema_decay = ema_decay
        self.ema_eps = ema_eps
        self.gradient_estimator = gradient_estimator
        self.restart_threshold = restart_threshold
        self.restart_decay = restart_decay
        self.restart_interval = restart_interval
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.use_external_codebook = (use_external_codebook
                                      or external_codebook_path is not None)
        self.external_codebook_path = external_codebook_path
        self.mix_mode = mix_mode

        # VQGAN's initialisation (Esser et al. 2021): U(-1/K, 1/K).
        init = torch.empty(codebook_size, embed_dim).uniform_(
            -1.0 / codebook_size, 1.0 / codebook_size)
        if ema_decay is None:
            self.codebook = nn.Parameter(
                init, requires_grad=not frozen_codebook)
        else:
            self.register_buffer('codebook', init)
            self.register_buffer('ema_cluster_size',
                                 torch.empty(codebook_size))
            self.register_buffer('ema_embed_sum', torch.empty_like(init))
        if restart_threshold is not None:
            self.register_buffer('code_usage', torch.empty(codebook_size))
            self.register_buffer('restart_steps',
                                 torch.zeros((), dtype=torch.long))
        if kmeans_init:
            self.register_buffer('kmeans_initialized',
                                 torch.zeros((), dtype=torch.bool))
        if self.use_external_codebook:
            self.register_buffer('external_codebook', torch.zeros_like(init))
            self.register_buffer('external_codebook_loaded',
                                 torch.zeros((), dtype=torch.bool))
            self.register_buffer('mix_weight', torch.zeros(()))
        self.set_codes(init)

        self.project_in, self.project_out = code_space_projections(
            self.in_channels, embed_dim)

    def _check_options(self, codebook_size, embed_dim, ema_decay, ema_eps,
                       gradient_estimator, restart_threshold, restart_decay,
                       restart_interval, kmeans_init, kmeans_iters,
                       frozen_codebook, mix_mode):
        """Raise ``ValueError`` naming the first invalid option."""
        positive = dict(codebook_size=codebook_size, embed_dim=embed_dim,
                        in_channels=self.in_channels, ema_eps=ema_eps,
                        restart_interval=restart_interval,
                        kmeans_iters=kmeans_iters)
        if restart_threshold is not None:
            positive['restart_threshold'] = restart_threshold
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f'{name} must be positive, got {value!r}')
        decays = dict(restart_decay=restart_decay)
        if ema_decay is not None:
            decays['ema_decay'] = ema_decay
        for name, value in decays.items():
            if not 0 <= value < 1:
                raise ValueError(f'{name} must be in [0, 1), got {value!r}')
        if gradient_estimator not in GRADIENT_ESTIMATORS:
            raise ValueError(f'gradient_estimator must be one of '
                             f'{GRADIENT_ESTIMATORS}, got '
                             f'{gradient_estimator!r}')
        if mix_mode not in MIX_MODES:
            raise ValueError(
                f'mix_mode must be one of {MIX_MODES}, got {mix_mode!r}')
        if mix_mode == 'recursive' and ema_decay is None:
            raise ValueError("mix_mode='recursive' re-syncs the EMA sums and "
                             'needs ema_decay, got ema_decay=None')
        if frozen_codebook:
            updates = dict(ema_decay=ema_decay,
                           restart_threshold=restart_threshold,
                           kmeans_init=kmeans_init)
            for name, value in updates.items():
                if value is not None and value is not False:
                    raise ValueError(
                        f'frozen_codebook=True contradicts {name}={value!r}: '
                        'a frozen codebook is never updated')

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[0]

    # --- the codebook --------------------------------------------------------
    def _smoothed_cluster_size(self) -> torch.Tensor:
        """Laplace-smoothed EMA cluster sizes ``Ñ`` ``(K,)``."""
        sizes = self.ema_cluster_size
        total = sizes.sum()
        return ((sizes + self.ema_eps) /
                (total + self.codebook_size * self.ema_eps) * total)

    def _ema_codebook(self) -> torch.Tensor:
        """``e_i = m_i / Ñ_i`` from the EMA statistics, ``(K, D)``."""
        return self.ema_embed_sum / self._smoothed_cluster_size().unsqueeze(-1)

    def _mix(self, codes: torch.Tensor) -> torch.Tensor:
        """``(1 - λ) C + λ C_ext``."""
        weight = self.mix_weight
        return (1 - weight) * codes + weight * self.external_codebook.float()

    @torch.no_grad()
    def set_codes(self, vectors: torch.Tensor, rows=None) -> None:
        """Set the learned codes ``rows`` (all when ``None``; an index or
        bool tensor) to ``vectors`` ``(n, D)`` given in the code space.

        Use this rather than writing ``codebook`` in place: with EMA it resets
        the statistics of those rows as for a new code (cluster size 1,
        embedding sum such that the code equals the vector); with dead-code
        restart their usage restarts at the threshold.
        """
        rows = slice(None) if rows is None else rows
        if self.ema_decay is None:
            self.codebook[rows] = vectors.to(self.codebook)
        else:
            self.ema_cluster_size[rows] = INITIAL_CLUSTER_SIZE
            smoothed = self._smoothed_cluster_size()[rows].unsqueeze(-1)
            self.ema_embed_sum[rows] = vectors.to(smoothed) * smoothed
            self.codebook.copy_(self._ema_codebook())
        if self.restart_threshold is not None:
            self.code_usage[rows] = self.restart_threshold

    def code_vectors(self) -> torch.Tensor:
        """The codes as they come out, ``(K, D)`` fp32: mixed with the
        external codebook (``mix_mode='replace'``) and unit-norm with
        ``l2_norm_output`` (i.e. ``use_l2_norm`` unless
        ``l2_norm_output=False``)."""
        with torch.autocast(self.codebook.device.type, enabled=False):
            codes = self.codebook.float()
            if self.use_external_codebook and self.mix_mode == 'replace':
                codes = self._mix(codes)
            return F.normalize(codes, dim=-1) if self.l2_norm_output else codes

    def _nearest(self, flat: torch.Tensor,
                 codes: torch.Tensor) -> torch.Tensor:
        """Indices of the nearest ``codes`` ``(K, D)`` (from
        :meth:`code_vectors`) to the code-space vectors ``flat`` ``(N, D)``
        (from :meth:`_to_code_space`): Euclidean, which is the cosine argmax
        when both are already unit-norm (``l2_norm_output``); with
        ``use_l2_norm`` and raw codes out both are normalised here first."""
        if self.use_l2_norm and not self.l2_norm_output:
            with torch.autocast(flat.device.type, enabled=False):
                flat = F.normalize(flat.float(), dim=-1)
                codes = F.normalize(codes.float(), dim=-1)
        return nearest_code(flat, codes)

    # --- external codebook (UniCode) ----------------------------------------
    def init_weights(self) -> None:
        """Load ``external_codebook_path`` if set (mmengine calls this before
        iteration 0; constructors never read files)."""
        if self.external_codebook_path is not None:
            self.load_external_codebook(self.external_codebook_path)

    @torch.no_grad()
    def load_external_codebook(
            self, source: Union[torch.Tensor, str, os.PathLike]) -> None:
        """Copy a ``(K, D)`` tensor, or the one tensor stored in a file
        (loaded safely; ``.safetensors`` or ``torch.save``), into
        ``external_codebook``."""
        if not self.use_external_codebook:
            raise ValueError('load_external_codebook needs a quantizer built '
                             'with use_external_codebook=True or '
                             'external_codebook_path')
        if not isinstance(source, torch.Tensor):
            path = osp.expanduser(str(source))
            if not osp.isfile(path):
                raise FileNotFoundError(
                    f'external codebook file {path!r} (the quantizer\'s '
                    'external_codebook_path) does not exist: save the '
                    f'({self.codebook_size}, {self.embed_dim}) table, e.g. '
                    "the chosen rows of an LLM's input-embedding matrix "
                    '(UniCode), with torch.save or safetensors and point '
                    'external_codebook_path at it')
            if path.endswith('.safetensors'):
                loaded = load_safetensors(path)
            else:
                loaded = load_checkpoint_file(path, map_location='cpu')
            source = _single_tensor(loaded, path)
        expected = (self.codebook_size, self.embed_dim)
        if tuple(source.shape) != expected:
            raise ValueError(f'external codebook must have shape {expected} '
                             f'(codebook_size, embed_dim), got '
                             f'{tuple(source.shape)}')
        self.external_codebook.copy_(source)
        self.external_codebook_loaded.fill_(True)

    @torch.no_grad()
    def set_mix_weight(self, weight: float) -> None:
        """Set ``λ`` in ``[0, 1]`` of the mix towards the external codebook
        (0: learned codebook, 1: external codebook)."""
        if not self.use_external_codebook:
            raise ValueError('set_mix_weight needs a quantizer built with '
                             'use_external_codebook=True or '
                             'external_codebook_path')
        if not 0 <= weight <= 1:
            raise ValueError(f'mix weight must be in [0, 1], got {weight!r}')
        if weight > 0 and not self.external_codebook_loaded:
            raise RuntimeError('set_mix_weight(%r) before the external '
                               'codebook was loaded: call init_weights() or '
                               'load_external_codebook() first' % weight)
        self.mix_weight.fill_(weight)

    # --- code space ----------------------------------------------------------
    def _to_code_space(self, z: torch.Tensor):
        """``(B, C, *spatial)`` -> fp32 code-space vectors ``(N, D)``
        (unit-norm with ``l2_norm_output``) and the index shape
        ``(B, *spatial)``."""
        check_latent(z, self.in_channels, min_spatial_dims=1)
        flat, index_shape = flatten_channels_last(z)
        flat = self.project_in(flat)
        with torch.autocast(flat.device.type, enabled=False):
            flat = flat.float()
            if self.l2_norm_output:
                flat = F.normalize(flat, dim=-1)
        return flat, index_shape

    def _from_code_space(self, flat: torch.Tensor,
                         index_shape: torch.Size) -> torch.Tensor:
        """Code-space vectors ``(N, D)`` -> ``(B, C, *spatial)``."""
        return unflatten_channels_first(self.project_out(flat), index_shape)

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Indices ``(B, *spatial)`` of ``z`` ``(B, C, *spatial)``."""
        flat, index_shape = self._to_code_space(z)
        return self._nearest(flat, self.code_vectors()).reshape(index_shape)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Quantized latents ``(B, C, *spatial)`` of ``indices``
        ``(B, *spatial)``."""
        codes = self.code_vectors()[indices.reshape(-1)]
        return self._from_code_space(codes, indices.shape)

    # --- training-time updates ---------------------------------------------
    def _choose_on_rank0(self, vectors: torch.Tensor, shape, choose):
        """``choose(vectors)`` (a tensor of ``shape``) computed on rank 0 from
        its vectors and broadcast; ``None`` on every rank when rank 0 has no
        (unmasked) vector."""
        available = torch.tensor(float(len(vectors)), device=vectors.device)
        if not broadcast_from_rank0_(available):
            return None
        chosen = torch.empty(shape, device=vectors.device)
        if get_rank() == 0:
            chosen.copy_(choose(vectors))
        return broadcast_from_rank0_(chosen)

    def _kmeans_init(self, vectors: torch.Tensor) -> None:
        """Set the codes to k-means centroids of rank 0's ``vectors``."""
        centroids = self._choose_on_rank0(
            vectors, self.codebook.shape, lambda v: kmeans(
                v, self.codebook_size, self.kmeans_iters,
                self.l2_norm_output))
        if centroids is not None:
            self.set_codes(centroids)
            self.kmeans_initialized.fill_(True)

    def _ema_update(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        """VQ-VAE appendix A.1 with all-rank ``counts`` ``(K,)`` and
        ``sums`` ``(K, D)``; ``mix_mode='recursive'`` then folds the mix into
        the EMA sums."""
        decay = self.ema_decay
        self.ema_cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        self.ema_embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
        codebook = self._ema_codebook()
        if self.use_external_codebook and self.mix_mode == 'recursive':
            codebook = self._mix(codebook)
            self.ema_embed_sum.copy_(
                codebook * self._smoothed_cluster_size().unsqueeze(-1))
        self.codebook.copy_(codebook)

    def _restart_dead_codes(self, vectors: torch.Tensor,
                            counts: torch.Tensor) -> int:
        """Update the usage EMA with all-rank ``counts``; every
        ``restart_interval`` steps re-initialise the codes below the
        threshold from rank 0's ``vectors``. Returns how many restarted."""
        decay = self.restart_decay
        self.code_usage.mul_(decay).add_(counts, alpha=1 - decay)
        self.restart_steps += 1
        if self.restart_steps % self.restart_interval:
            return 0
        # usage comes from all-rank counts: the same codes die on every rank
        dead = self.code_usage < self.restart_threshold
        num_dead = int(dead.sum())
        if num_dead == 0:
            return 0
        replacements = self._choose_on_rank0(
            vectors, (num_dead, self.embed_dim),
            lambda v: v[sample_rows(len(v), num_dead, v.device)])
        if replacements is None:
            return 0
        self.set_codes(replacements, dead)
        return num_dead

    def _update_codebook(self, vectors: torch.Tensor, indices: torch.Tensor,
                         counts: torch.Tensor) -> Optional[int]:
        """EMA update and dead-code restart from this rank's unmasked code-
        space ``vectors`` ``(n, D)``, their ``indices`` and histogram
        ``counts``; statistics are summed over ranks first. Returns the
        number of restarted codes (``None`` without restarts)."""
        if self.ema_decay is not None:
            sums = torch.zeros_like(self.codebook, dtype=torch.float32)
            sums.index_add_(0, indices, vectors)
            stats = all_reduce_sum_(
                torch.cat([counts.float().unsqueeze(-1), sums], dim=-1))
            counts, sums = stats[:, 0], stats[:, 1:]
            self._ema_update(counts, sums)
        else:
            counts = all_reduce_sum_(counts.float())
        if self.restart_threshold is None:
            return None
        return self._restart_dead_codes(vectors, counts)

    # --- forward -------------------------------------------------------------
    def forward(self, z: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> QuantizerOutput:
        """Quantize ``z`` ``(B, C, *spatial)``; ``mask`` ``(B, *spatial)``
        bool, True = real token. See the class docstring."""
        check_latent(z, self.in_channels, mask, min_spatial_dims=1)
        flat, index_shape = self._to_code_space(z)
        if mask is not None:
            mask = mask.reshape(-1)

        def unmasked(x):
            return x if mask is None else x[mask]

        if self.training and self.kmeans_init and not self.kmeans_initialized:
            with torch.no_grad():
                self._kmeans_init(unmasked(flat.detach()))
        codes = self.code_vectors()
        indices = self._nearest(flat.detach(), codes.detach())
        counts = torch.bincount(unmasked(indices),
                                minlength=self.codebook_size)
        num_restarted = None
        if self.training and (self.ema_decay is not None
                              or self.restart_threshold is not None):
            with torch.no_grad():
                num_restarted = self._update_codebook(
                    unmasked(flat.detach()), unmasked(indices), counts)
            codes = self.code_vectors()
        q = codes[indices]

        flat_kept, q_kept = unmasked(flat), unmasked(q)
        denominator = max(flat_kept.numel(), 1)  # 0 loss if all is masked
        loss = dict(loss_commitment=self.commitment_weight *
                    (flat_kept - q_kept.detach()).pow(2).sum() / denominator)
        if not self.frozen_codebook and self.ema_decay is None:
            loss['loss_codebook'] = self.codebook_weight * (
                q_kept - flat_kept.detach()).pow(2).sum() / denominator

        stats = usage_stats(counts)
        if num_restarted is not None:
            stats['restarted_codes'] = torch.tensor(float(num_restarted),
                                                    device=counts.device)

        if self.gradient_estimator == 'rotation_trick':
            out = rotation_trick(flat, q)
        else:
            out = straight_through(flat, q)
        return QuantizerOutput(
            quantized=self._from_code_space(out, index_shape),
            indices=indices.reshape(index_shape),
            loss=loss,
            stats=stats)
