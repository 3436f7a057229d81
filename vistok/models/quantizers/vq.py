"""Vector quantization with a learned codebook (VQ-VAE, van den Oord et al.
2017, "Neural Discrete Representation Learning") and the tricks of the VQ
family, each a keyword option of one class: EMA codebook updates, the
rotation trick, dead-code restart, k-means init, a frozen codebook and
mixing towards an external frozen codebook (UniCode: an LLM's token
embeddings as the codebook, with UniCode's latent-norm control).
"""
import math
import os
import os.path as osp
from typing import Dict, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.models.utils.code_search import nearest_code
from vistok.registry import QUANTIZERS
from vistok.structures import QuantizerOutput
from vistok.utils.checkpoint import (
    load_checkpoint_file,
    load_safetensors_file,
)
from vistok.utils.dist import all_reduce_sum_, broadcast_from_rank0_, get_rank
from vistok.utils.llm_embedding import (
    read_llm_embedding,
    select_llm_rows,
    table_sha256,
)
from .base import (
    BaseQuantizer,
    check_indices,
    check_latent,
    check_option_types,
    code_space_projections,
    flatten_channels_last,
    straight_through,
    unflatten_channels_first,
    usage_stats,
)

GRADIENT_ESTIMATORS = ('straight_through', 'rotation_trick')
MIX_MODES = ('replace', 'recursive', 'unicode')
#: statistics of the latent's mean l2 norm for ``mix_mode='unicode'``
LATENT_NORM_STATS = ('sample', 'running', 'batch')
#: token id of ``selected_llm_indices`` before a table or checkpoint set it
UNSET_TOKEN_ID = -1
#: bytes of a sha256 digest (the ``external_codebook_sha256`` buffer; all
#: zeros until a table is loaded)
SHA256_BYTES = 32
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


def sha256_bytes(hex_digest: str) -> torch.Tensor:
    """A hex sha256 digest as the ``(32,)`` ``uint8`` tensor a buffer
    holds."""
    return torch.tensor(list(bytes.fromhex(hex_digest)), dtype=torch.uint8)


def is_recorded(buffer: torch.Tensor) -> bool:
    """Whether a record buffer (``external_codebook_sha256``, all zeros
    until set; ``selected_llm_indices``, all ``UNSET_TOKEN_ID``) is set."""
    unset = 0 if buffer.dtype == torch.uint8 else UNSET_TOKEN_ID
    return bool((buffer != unset).any())


def _integer_tensor(values, name: str) -> torch.Tensor:
    """``values`` as an integer tensor (``ValueError`` naming ``name``
    otherwise)."""
    values = torch.as_tensor(values)
    if values.dtype == torch.bool or values.is_floating_point() or \
            values.is_complex():
        raise ValueError(f'{name} must be integers, got {values.dtype}')
    return values.long()


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
    training mode only (and not while :meth:`set_codebook_frozen` holds the
    codebook), under ``no_grad``, in fp32, before the codes are
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
            holding the ``(K, D)`` external codebook in the code space or,
            with ``external_codebook_key``, an LLM's weights (a file or a
            local Hugging Face folder); implies ``use_external_codebook``.
            Constructors never read files (DESIGN §6): :meth:`init_weights`
            (and :meth:`init_inference_weights`) load it.
        external_codebook_key: read the table from an LLM (UniCode's
            codebook source): only the ``(V, D)`` tensor of this name (e.g.
            ``'model.embed_tokens.weight'``) is read from
            ``external_codebook_path``
            (:func:`~vistok.utils.llm_embedding.read_llm_embedding`), and
            the ``K`` rows of
            :func:`~vistok.utils.llm_embedding.select_llm_rows` become the
            codebook: the whole vocabulary when ``K = V``, else the ``K``
            rows with the smallest norms ``>= 1``, re-sorted by token id
            (the official ``EMAVectorQuantizer.__init__``). Their token ids
            are the persistent buffer ``selected_llm_indices``, so
            :meth:`llm_token_ids` and :meth:`indices_from_llm_token_ids`
            work from a checkpoint without the LLM. ``None``: the file holds
            the ``(K, D)`` table itself.
        external_num_codes: how many LLM rows are taken (with
            ``external_codebook_key``): the codebook size, so it must equal
            ``codebook_size``; ``None`` means ``codebook_size``.
        external_codebook_in_checkpoint: keep the table (and
            ``external_codebook_loaded``) in the state dict, as persistent
            buffers (the default). ``False`` keeps it out of checkpoints,
            and so out of a tokenizer's ``ema.*`` copy, and records its
            sha256 (:func:`~vistok.utils.llm_embedding.table_sha256` of the
            ``(K, D)`` table) in the persistent ``uint8`` buffer
            ``external_codebook_sha256``: loading a state dict recorded
            against another table than the loaded one, or loading another
            table than the one a loaded state dict records, raises an error
            naming both hashes. The table is then read from its file again:
            :meth:`init_weights` before training (before a resume loads the
            checkpoint), :meth:`init_inference_weights` before inference.
        mix_mode: how the mix is applied. ``'replace'`` (the official
            UniCode mix without its norm matching): the codebook in use is
            ``(1 - λ) C + λ C_ext`` at every look-up, with ``C`` the learned
            (EMA or gradient) codebook, whose statistics the mix never
            touches. ``'recursive'`` (EMA only): each EMA update mixes and
            then re-syncs the EMA sums to the mixed codebook, so the external
            share compounds: after ``t`` steps it is
            ``1 - Π_{i≤t} (1 - λ_i)`` (ignoring the pull of the data); with a
            linear ramp ``λ_i = i / T`` that is ``≈ 1 - exp(-t² / 2T)``, e.g.
            ~92% external after 48 steps of a 480-step ramp (10% of it),
            where ``'replace'`` is at 10%. It is a different method, not a
            re-parametrisation. ``'unicode'`` (EMA only, without
            ``use_l2_norm``): UniCode's mix with its latent-norm control
            (``EMAVectorQuantizer.forward``, ``norm_type='rela_llm'``, in the
            official ``src/vae/models/stage1/modules/quantizer.py``). With
            ``E`` the external table, ``m`` the mean of its row norms and
            ``r`` the latent ratio, the codebook in use (:meth:`code_vectors`)
            is ``C_t = (1 - λ) Ĉ + λ r E`` with ``Ĉ_i = normalize(C_ema,i) ·
            ‖E_i‖ · r``: the EMA codebook's directions at the LLM tokens'
            norms, mixed at every look-up from the EMA statistics, which the
            mix never touches. The code-space latent is capped to a mean l2
            norm of at most ``n_max`` (``latent_norm_cap``): ``z ← z · min(1,
            n_max / n)`` with ``n`` its mean norm (``latent_norm_stat``), and
            ``r = min(n, n_max) / n_max``; the look-up compares ``z / s`` with
            ``C_t``, ``s = n_max · m`` (:meth:`lookup_scale`), and the codes
            come out multiplied back, ``C_t[k] · s``, in the capped latent's
            scale, where the commitment loss compares them (the cap is
            differentiable, as in the official code). ``r`` is one number,
            since ``decode`` needs it: the buffer ``latent_ratio``
            (checkpointed, 1 before training), updated in training together
            with the EMA statistics, i.e. after the look-up, to the batch's
            ratio (for ``'sample'``: the mean of its samples' ratios;
            summed over ranks, where the official code keeps one per rank).
            Its forward adds the scalar stats ``latent_ratio`` and
            ``latent_norm`` (the batch's mean norm before the cap).
        latent_norm_stat: (``'unicode'`` only) the statistic ``n``:
            ``'sample'`` (the default): each sample's mean norm over its own
            (unmasked) positions, so an image's ids never depend on its
            batch-mates; ``'running'``: a running mean of the batch means
            (``latent_norm_decay``; the first training step sets it; the
            buffer ``latent_norm_running``), updated in training after the
            look-up and frozen in evaluation; ``'batch'``: the mean over the
            rank's whole batch, as the official code (an image's ids then
            depend on its batch-mates).
        latent_norm_cap: ``n_max``, the official ``fix_len_l2norm`` (30).
        latent_norm_decay: decay of the ``'running'`` mean.
        cap_latent_norm: (``'unicode'`` only) cap the input inside
            :meth:`forward` and :meth:`encode`. ``False`` for a quantizer
            whose input a container has capped with :meth:`cap_latent`
            (which also updates ``r``): the official RQ-VAE caps the latent
            once before its residual depths (``RQGenerator.encode`` in
            ``src/vae/models/stage1/generator.py``) and its shared
            ``RQ_EMAVectorQuantizer`` does not cap the residuals.

    Language-driven training (UniCode §3.2; the ``CodebookMixHook``) drives
    an external codebook through :meth:`set_mix_weight` (λ),
    :meth:`set_codebook_frozen` (the tail) and logs :meth:`mix_stats`.
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
                 mix_mode: str = 'replace',
                 external_codebook_key: Optional[str] = None,
                 external_num_codes: Optional[int] = None,
                 external_codebook_in_checkpoint: bool = True,
                 latent_norm_stat: Optional[str] = None,
                 latent_norm_cap: float = 30.0,
                 latent_norm_decay: float = 0.99,
                 cap_latent_norm: bool = True):
        check_option_types(
            codebook_size=(codebook_size, 'int'),
            embed_dim=(embed_dim, 'int'),
            in_channels=(in_channels, 'int?'),
            use_l2_norm=(use_l2_norm, 'bool'),
            l2_norm_output=(l2_norm_output, 'bool?'),
            commitment_weight=(commitment_weight, 'real'),
            codebook_weight=(codebook_weight, 'real'),
            frozen_codebook=(frozen_codebook, 'bool'),
            ema_decay=(ema_decay, 'real?'),
            ema_eps=(ema_eps, 'real'),
            gradient_estimator=(gradient_estimator, 'str'),
            restart_threshold=(restart_threshold, 'real?'),
            restart_decay=(restart_decay, 'real'),
            restart_interval=(restart_interval, 'int'),
            kmeans_init=(kmeans_init, 'bool'),
            kmeans_iters=(kmeans_iters, 'int'),
            use_external_codebook=(use_external_codebook, 'bool'),
            external_codebook_path=(external_codebook_path, 'path?'),
            mix_mode=(mix_mode, 'str'),
            external_codebook_key=(external_codebook_key, 'str?'),
            external_num_codes=(external_num_codes, 'int?'),
            external_codebook_in_checkpoint=(
                external_codebook_in_checkpoint, 'bool'),
            latent_norm_stat=(latent_norm_stat, 'str?'),
            latent_norm_cap=(latent_norm_cap, 'real'),
            latent_norm_decay=(latent_norm_decay, 'real'),
            cap_latent_norm=(cap_latent_norm, 'bool'))
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
        if mix_mode == 'unicode' and latent_norm_stat is None:
            latent_norm_stat = 'sample'
        self._check_external_options(
            codebook_size, use_l2_norm, mix_mode, external_codebook_key,
            external_num_codes, external_codebook_in_checkpoint,
            latent_norm_stat, latent_norm_cap, latent_norm_decay,
            cap_latent_norm)
        self.external_codebook_key = external_codebook_key
        self.external_num_codes = external_num_codes
        self.external_codebook_in_checkpoint = external_codebook_in_checkpoint
        self.latent_norm_stat = latent_norm_stat
        self.latent_norm_cap = float(latent_norm_cap)
        self.latent_norm_decay = latent_norm_decay
        self.cap_latent_norm = cap_latent_norm

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
            self._register_external_buffers(init)
        self.set_codes(init)

        self.project_in, self.project_out = code_space_projections(
            self.in_channels, embed_dim)

    def _register_external_buffers(self, init: torch.Tensor) -> None:
        """The external codebook's buffers (see the class docstring)."""
        in_checkpoint = self.external_codebook_in_checkpoint
        unicode = self.mix_mode == 'unicode'
        self.register_buffer('external_codebook', torch.zeros_like(init),
                             persistent=in_checkpoint)
        self.register_buffer('external_codebook_loaded',
                             torch.zeros((), dtype=torch.bool),
                             persistent=in_checkpoint)
        self.register_buffer('mix_weight', torch.zeros(()))
        # checkpointed in the new mode only: older checkpoints keep their keys
        self.register_buffer('codebook_frozen',
                             torch.zeros((), dtype=torch.bool),
                             persistent=unicode)
        if self.external_codebook_key is not None:
            self.register_buffer(
                'selected_llm_indices',
                torch.full((len(init), ), UNSET_TOKEN_ID, dtype=torch.long))
        if not in_checkpoint:
            self.register_buffer('external_codebook_sha256',
                                 torch.zeros(SHA256_BYTES, dtype=torch.uint8))
        if unicode:
            self.register_buffer('latent_ratio', torch.ones(()))
            if self.latent_norm_stat == 'running':
                self.register_buffer('latent_norm_running',
                                     torch.tensor(self.latent_norm_cap))
                self.register_buffer('latent_norm_initialized',
                                     torch.zeros((), dtype=torch.bool))

    def _check_external_options(self, codebook_size, use_l2_norm, mix_mode,
                                key, num_codes, in_checkpoint, norm_stat,
                                norm_cap, norm_decay, cap_latent_norm):
        """Raise ``ValueError`` naming the first invalid option of the
        external codebook (needs ``self.use_external_codebook``)."""
        needs_external = dict(external_codebook_key=key is not None,
                              external_codebook_in_checkpoint=not
                              in_checkpoint)
        if mix_mode == 'unicode':
            needs_external['mix_mode'] = True
        for name, used in needs_external.items():
            if used and not self.use_external_codebook:
                raise ValueError(
                    f'{name} needs an external codebook: set '
                    'external_codebook_path (or use_external_codebook=True)')
        if key is not None and not (isinstance(key, str) and key):
            raise ValueError(f'external_codebook_key must be a non-empty '
                             f'string (the LLM tensor name), got {key!r}')
        if num_codes is not None:
            if key is None:
                raise ValueError(
                    'external_num_codes selects rows of an LLM table and '
                    'needs external_codebook_key (e.g. '
                    "'model.embed_tokens.weight')")
            if num_codes != codebook_size:
                raise ValueError(
                    f'external_num_codes={num_codes!r} must equal '
                    f'codebook_size={codebook_size}: the selected LLM rows '
                    'are the codebook')
        if mix_mode != 'unicode':
            for name, value, default in (
                    ('latent_norm_stat', norm_stat, None),
                    ('cap_latent_norm', cap_latent_norm, True)):
                if value != default:
                    raise ValueError(
                        f"{name}={value!r} needs mix_mode='unicode' (the "
                        f'latent-norm control), got mix_mode={mix_mode!r}')
            return
        if use_l2_norm:
            raise ValueError("mix_mode='unicode' matches the codes to the "
                             'norms of the external table and needs '
                             'use_l2_norm=False')
        if norm_stat not in LATENT_NORM_STATS:
            raise ValueError(f'latent_norm_stat must be one of '
                             f'{LATENT_NORM_STATS}, got {norm_stat!r}')
        if not norm_cap > 0:
            raise ValueError(
                f'latent_norm_cap must be positive, got {norm_cap!r}')
        if not 0 <= norm_decay < 1:
            raise ValueError(
                f'latent_norm_decay must be in [0, 1), got {norm_decay!r}')

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
        if mix_mode == 'unicode' and ema_decay is None:
            raise ValueError("mix_mode='unicode' aligns the EMA codebook "
                             'and needs ema_decay (UniCode: 0.99), got '
                             'ema_decay=None')
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

    def _unicode_mix(self, codes: torch.Tensor) -> torch.Tensor:
        """``C_t = (1 - λ) Ĉ + λ r E`` with ``Ĉ_i = normalize(C_i) · ‖E_i‖ ·
        r`` (official ``EMAVectorQuantizer.forward``, ``rela_llm``). At
        ``λ = 1`` this is ``r E`` bit for bit: ``0 · Ĉ + 1 · (r E)``."""
        table = self.external_codebook.float()
        ratio, weight = self.latent_ratio.float(), self.mix_weight.float()
        aligned = (F.normalize(codes, dim=-1) *
                   table.norm(dim=-1, keepdim=True) * ratio)
        return (1 - weight) * aligned + weight * (ratio * table)

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
        """The codebook in use, ``(K, D)`` fp32: mixed with the external
        codebook (``mix_mode='replace'`` or ``'unicode'``, see there; the
        ``'unicode'`` codes come out multiplied by :meth:`lookup_scale`)
        and unit-norm with ``l2_norm_output`` (i.e. ``use_l2_norm`` unless
        ``l2_norm_output=False``)."""
        with torch.autocast(self.codebook.device.type, enabled=False):
            codes = self.codebook.float()
            if self.use_external_codebook and self.mix_mode == 'replace':
                if not self.external_codebook_in_checkpoint:
                    self._require_table(only_if_mixed=True)
                codes = self._mix(codes)
            elif self.mix_mode == 'unicode':
                self._require_table()
                codes = self._unicode_mix(codes)
            return F.normalize(codes, dim=-1) if self.l2_norm_output else codes

    def lookup_scale(self) -> torch.Tensor:
        """``s = n_max · mean_i ‖E_i‖`` (``mix_mode='unicode'``; the official
        ``scaled_ratio`` of ``norm_type='rela_llm'``): latents are divided by
        ``s`` for the look-up and codes multiplied by it on the way out. A
        0-dim fp32 tensor."""
        if self.mix_mode != 'unicode':
            raise ValueError("lookup_scale needs mix_mode='unicode', got "
                             f'mix_mode={self.mix_mode!r}')
        self._require_table()
        with torch.autocast(self.codebook.device.type, enabled=False):
            return self.latent_norm_cap * self.external_codebook.float().norm(
                dim=-1).mean()

    def _out_codes(self, codes: torch.Tensor,
                   indices: torch.Tensor) -> torch.Tensor:
        """The rows ``indices`` ``(N,)`` of the codebook in use ``codes``
        as they come out: multiplied back by :meth:`lookup_scale` for
        ``'unicode'``. The one expression of ``forward`` and ``decode``, so
        both are bit-identical."""
        if self.mix_mode == 'unicode':
            return codes[indices] * self.lookup_scale()
        return codes[indices]

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

    def init_inference_weights(self) -> None:
        """Load ``external_codebook_path`` unless a table is already there
        (from a checkpoint that holds it, or an earlier load): what a model
        loaded for inference needs with
        ``external_codebook_in_checkpoint=False``. An owner calls it on its
        quantizer and on the quantizer's EMA copy."""
        if (self.external_codebook_path is not None
                and not bool(self.external_codebook_loaded)):
            self.load_external_codebook(self.external_codebook_path)

    @torch.no_grad()
    def load_external_codebook(
            self, source: Union[torch.Tensor, str, os.PathLike]) -> None:
        """Fill ``external_codebook``.

        Without ``external_codebook_key``: from a ``(K, D)`` tensor, or the
        one tensor stored in a file (loaded safely; ``.safetensors`` or
        ``torch.save``). With it: ``source`` is the LLM — a path for
        :func:`~vistok.utils.llm_embedding.read_llm_embedding` or its
        ``(V, D)`` table as a tensor — whose selected rows are copied, their
        token ids into ``selected_llm_indices``. Ids and (with
        ``external_codebook_in_checkpoint=False``) the table's sha256 are
        recorded; a load that differs from a recorded one raises.
        """
        if not self.use_external_codebook:
            raise ValueError('load_external_codebook needs a quantizer built '
                             'with use_external_codebook=True or '
                             'external_codebook_path')
        where = ('a tensor' if isinstance(source, torch.Tensor) else
                 repr(osp.expanduser(str(source))))
        token_ids = None
        if self.external_codebook_key is not None:
            source, token_ids = self._read_llm_rows(source, where)
        elif not isinstance(source, torch.Tensor):
            source = self._read_table_file(source)
        expected = (self.codebook_size, self.embed_dim)
        if tuple(source.shape) != expected:
            raise ValueError(f'external codebook must have shape {expected} '
                             f'(codebook_size, embed_dim), got '
                             f'{tuple(source.shape)}')
        records = {}
        if token_ids is not None:
            records['selected_llm_indices'] = token_ids
        if not self.external_codebook_in_checkpoint:
            records['external_codebook_sha256'] = sha256_bytes(
                table_sha256(source))
        for name, value in records.items():
            recorded = getattr(self, name)
            if is_recorded(recorded) and not torch.equal(
                    recorded.cpu(), value):
                raise self._mismatch(name, recorded, value, where)
        for name, value in records.items():
            getattr(self, name).copy_(value)
        self.external_codebook.copy_(source)
        self.external_codebook_loaded.fill_(True)

    def _read_table_file(self, source) -> torch.Tensor:
        """The one ``(K, D)`` tensor of a ``torch.save`` / safetensors
        file."""
        path = osp.expanduser(str(source))
        if not osp.isfile(path):
            raise FileNotFoundError(
                f'external codebook file {path!r} (the quantizer\'s '
                'external_codebook_path) does not exist: save the '
                f'({self.codebook_size}, {self.embed_dim}) table, e.g. '
                "the chosen rows of an LLM's input-embedding matrix "
                '(UniCode), with torch.save or safetensors and point '
                'external_codebook_path at it, or set external_codebook_key '
                'to read the rows from the LLM itself')
        if path.endswith('.safetensors'):
            loaded = load_safetensors_file(path)
        else:
            loaded = load_checkpoint_file(path, map_location='cpu')
        return _single_tensor(loaded, path)

    def _read_llm_rows(self, source, where: str):
        """``(rows (K, D), their token ids (K,))`` of the LLM ``source``."""
        key = self.external_codebook_key
        if isinstance(source, torch.Tensor):
            table = source.detach().to('cpu', torch.float32)
        else:
            table = read_llm_embedding(source, key,
                                       config_key='external_codebook_path')
        if table.dim() != 2 or table.shape[1] != self.embed_dim:
            raise ValueError(
                f'the LLM table {key!r} of {where} has shape '
                f'{tuple(table.shape)}; it must be (vocabulary, '
                f'embed_dim={self.embed_dim}): the codes are LLM token '
                'embeddings, so embed_dim must be the LLM hidden size')
        num_key = ('external_num_codes' if self.external_num_codes is not None
                   else 'codebook_size')
        token_ids = select_llm_rows(table, self.codebook_size,
                                    config_key=num_key)
        return table[token_ids], token_ids

    def _mismatch(self, name: str, recorded: torch.Tensor,
                  loaded: torch.Tensor, where: str) -> ValueError:
        """The error of a table that is not the one a checkpoint records."""
        source = (f'external_codebook_path={self.external_codebook_path!r}'
                  + (f', external_codebook_key={self.external_codebook_key!r}'
                     if self.external_codebook_key is not None else ''))
        if name == 'external_codebook_sha256':
            what = (f'has sha256 {bytes(loaded.tolist()).hex()}, but the '
                    f'checkpoint was trained against a table with sha256 '
                    f'{bytes(recorded.tolist()).hex()}')
        else:
            changed = int((recorded.cpu() != loaded.cpu()).sum())
            what = (f'selects other LLM rows than the checkpoint\'s '
                    f'selected_llm_indices ({changed} of '
                    f'{self.codebook_size} token ids differ)')
        return ValueError(
            f'the external codebook loaded from {where} (config key '
            f'`external_codebook_path`; {source}) {what}: point '
            '`external_codebook_path` at the table the checkpoint was '
            'trained with')

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Check the table the incoming state dict records (its
        ``selected_llm_indices`` and, with
        ``external_codebook_in_checkpoint=False``, its sha256) against the
        loaded table, then load; a state dict recorded before any table was
        loaded (all unset) keeps this module's records."""
        kept = {}
        if self.use_external_codebook:
            loaded = bool(self.external_codebook_loaded)
            for name in ('selected_llm_indices', 'external_codebook_sha256'):
                incoming = state_dict.get(prefix + name)
                if name not in self._buffers or incoming is None:
                    continue
                mine = getattr(self, name)
                if not is_recorded(incoming):
                    if is_recorded(mine):
                        kept[name] = mine.clone()
                elif (loaded and is_recorded(mine) and not torch.equal(
                        incoming.to(mine.device), mine)):
                    raise self._mismatch(name, incoming, mine,
                                         'its file (loaded before the state '
                                         'dict)')
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)
        for name, value in kept.items():
            getattr(self, name).copy_(value)

    def _require_table(self, only_if_mixed: bool = False) -> None:
        """Raise unless the external table is loaded (with
        ``only_if_mixed``: unless it is loaded or ``λ = 0``)."""
        if only_if_mixed and not bool(self.mix_weight > 0):
            return
        if not bool(self.external_codebook_loaded):
            raise RuntimeError(
                f'the external codebook is not loaded (mix_mode='
                f'{self.mix_mode!r}, mix weight {float(self.mix_weight)}): '
                'call init_weights() or init_inference_weights() (which read '
                f'external_codebook_path={self.external_codebook_path!r}) or '
                'load_external_codebook(); with '
                'external_codebook_in_checkpoint=False a checkpoint does not '
                'hold the table')

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
        if weight < 1 and self.codebook_frozen:
            raise ValueError(
                f'set_mix_weight({weight!r}) on a frozen codebook: '
                'set_codebook_frozen(True) holds λ = 1; call '
                'set_codebook_frozen(False) first')
        self.mix_weight.fill_(weight)

    @torch.no_grad()
    def set_codebook_frozen(self, frozen: bool) -> None:
        """UniCode's tail (the last ``tail_epoch`` epochs train encoder and
        decoder against the frozen LLM codebook). ``True`` sets ``λ = 1`` —
        the codebook in use is then ``r E`` (``'unicode'``) or ``E`` — and
        stops every change of it by training forwards: no EMA update, no
        dead-code restart or k-means init, no update of ``r`` or of the
        running latent norm, no ``loss_codebook`` (gradient codebooks); the
        encoder keeps its commitment loss and straight-through gradient.
        ``False`` lets the updates resume (``λ`` stays until
        :meth:`set_mix_weight`). The flag is the buffer ``codebook_frozen``
        (checkpointed with ``mix_mode='unicode'``)."""
        if not self.use_external_codebook:
            raise ValueError('set_codebook_frozen needs a quantizer built '
                             'with use_external_codebook=True or '
                             'external_codebook_path')
        if frozen:
            self.set_mix_weight(1.0)
        self.codebook_frozen.fill_(bool(frozen))

    @torch.no_grad()
    def mix_stats(self) -> Dict[str, float]:
        """Floats to log while mixing: ``mix_weight`` (``λ``),
        ``latent_ratio`` (``r``; 1 without ``'unicode'``'s latent-norm
        control), ``diff_cos = 1 - mean_i cos(C_t,i, r E_i)`` between the
        codebook in use and the scaled external table (the official
        ``diff_cos``, ``src/vae/models/stage1/generator.py``; NaN before the
        table is loaded), ``codebook_frozen`` (0 or 1); with ``'unicode'``
        also ``lookup_scale`` (``s``), with ``'running'``
        ``latent_norm_running``."""
        if not self.use_external_codebook:
            raise ValueError('mix_stats needs a quantizer built with '
                             'use_external_codebook=True or '
                             'external_codebook_path')
        unicode = self.mix_mode == 'unicode'
        ratio = self.latent_ratio.float() if unicode else torch.ones(())
        stats = dict(mix_weight=float(self.mix_weight),
                     latent_ratio=float(ratio),
                     diff_cos=math.nan,
                     codebook_frozen=float(self.codebook_frozen))
        if bool(self.external_codebook_loaded):
            target = ratio.to(self.external_codebook) * \
                self.external_codebook.float()
            cosine = F.cosine_similarity(self.code_vectors(), target, dim=-1)
            stats['diff_cos'] = float(1 - cosine.mean())
            if unicode:
                stats['lookup_scale'] = float(self.lookup_scale())
        if unicode and self.latent_norm_stat == 'running':
            stats['latent_norm_running'] = float(self.latent_norm_running)
        return stats

    def llm_token_ids(self, indices: torch.Tensor) -> torch.Tensor:
        """LLM vocabulary ids of code ``indices`` (an integer tensor of any
        shape): ``selected_llm_indices[indices]``, from the buffer alone (a
        checkpoint suffices, no LLM file). An index outside
        ``[0, codebook_size)`` raises naming it."""
        ids = self._selected_ids('llm_token_ids')
        indices = _integer_tensor(indices, 'indices')
        bad = (indices < 0) | (indices >= self.codebook_size)
        if bad.any():
            raise ValueError(
                f'code index {int(indices[bad][0])} is outside [0, '
                f'{self.codebook_size}) (codebook_size): no LLM token id')
        return ids.to(indices.device)[indices]

    def indices_from_llm_token_ids(self,
                                   token_ids: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`llm_token_ids`: code indices of LLM vocabulary
        ``token_ids`` (any shape). An id outside the selected subset raises
        naming it."""
        ids = self._selected_ids('indices_from_llm_token_ids')
        token_ids = _integer_tensor(token_ids, 'token_ids')
        ids = ids.to(token_ids.device)
        positions = torch.searchsorted(ids, token_ids.reshape(-1)).clamp(
            max=len(ids) - 1).reshape(token_ids.shape)
        bad = ids[positions] != token_ids
        if bad.any():
            raise ValueError(
                f'LLM token id {int(token_ids[bad][0])} is not one of the '
                f'{len(ids)} vocabulary ids of the codebook '
                '(selected_llm_indices): it is no image code')
        return positions

    def _selected_ids(self, method: str) -> torch.Tensor:
        """``selected_llm_indices``, checked to be set."""
        if self.external_codebook_key is None:
            raise ValueError(f'{method} needs a codebook of LLM rows: build '
                             'the quantizer with external_codebook_key (and '
                             'external_codebook_path)')
        ids = self.selected_llm_indices
        if not is_recorded(ids):
            raise RuntimeError(
                f'{method}: selected_llm_indices are not set: load the table '
                '(init_weights(), load_external_codebook()) or a checkpoint '
                'of this quantizer')
        return ids

    # --- latent-norm control (UniCode) --------------------------------------
    def _control_latent_norm(self, flat: torch.Tensor, index_shape,
                             mask: Optional[torch.Tensor], update: bool):
        """Cap the code-space vectors ``flat`` ``(N, D)`` (fp32; positions
        of ``index_shape`` ``(B, *spatial)``, unmasked where ``mask``) to a
        mean norm ``<= n_max`` by the statistic of ``latent_norm_stat``.

        Returns ``(capped, pending, latent_norm)``: ``pending`` maps buffers
        to their new values (``latent_ratio``, the running mean) when
        ``update`` (training, codebook not frozen), else ``{}``; their sums
        are taken over ranks. ``latent_norm`` is the batch's mean norm
        before the cap (detached).
        """
        cap, stat = self.latent_norm_cap, self.latent_norm_stat
        norms = flat.norm(dim=-1)
        weights = (torch.ones_like(norms) if mask is None else
                   mask.reshape(-1).to(norms.dtype))
        tiny = torch.finfo(norms.dtype).tiny
        total = torch.stack([(norms * weights).sum(), weights.sum()]).detach()
        latent_norm = total[0] / total[1].clamp_min(1)
        pending = {}
        if stat == 'sample':
            num = weights.reshape(index_shape[0], -1).sum(1)
            means = (norms * weights).reshape(index_shape[0], -1).sum(1) / \
                num.clamp_min(1)
            factor = (cap / means.clamp_min(tiny)).clamp(max=1)
            capped = (flat.reshape(index_shape[0], -1, flat.shape[-1]) *
                      factor[:, None, None]).reshape(flat.shape)
            if update:  # the mean of the samples' ratios (with a position)
                has = (num > 0).to(norms.dtype)
                ratio = all_reduce_sum_(torch.stack([
                    (means * factor / cap * has).sum(), has.sum()]).detach())
                pending['latent_ratio'] = ratio[0] / ratio[1].clamp_min(1)
                valid = ratio[1] > 0
        elif stat == 'batch':  # official: mean norm of the (rank's) batch
            mean = (norms * weights).sum() / weights.sum().clamp_min(1)
            factor = (cap / mean.clamp_min(tiny)).clamp(max=1)
            capped = flat * factor
            if update:  # official post_len_l2norm: mean capped norm / n_max
                ratio = all_reduce_sum_(torch.stack([
                    (norms * factor * weights).sum() / cap,
                    weights.sum()]).detach())
                pending['latent_ratio'] = ratio[0] / ratio[1].clamp_min(1)
                valid = ratio[1] > 0
        else:  # running
            running = self.latent_norm_running
            if update:
                total = all_reduce_sum_(total.clone())
                valid = total[1] > 0
                batch_mean = total[0] / total[1].clamp_min(1)
                first = ~self.latent_norm_initialized
                running = torch.where(first & valid, batch_mean, running)
                decay = self.latent_norm_decay
                pending['latent_norm_running'] = torch.where(
                    first, running, decay * running + (1 - decay) * batch_mean)
                pending['latent_ratio'] = (
                    pending['latent_norm_running'].clamp(max=cap) / cap)
                pending['latent_norm_initialized'] = (
                    self.latent_norm_initialized | valid)
            capped = flat * (cap / running.clamp_min(tiny)).clamp(max=1)
        if update:  # a batch without any (unmasked) position changes nothing
            pending = {
                name: torch.where(valid, value, getattr(self, name))
                for name, value in pending.items()
            }
        return capped, pending, latent_norm

    @torch.no_grad()
    def _apply_pending(self, pending: Dict[str, torch.Tensor]) -> None:
        for name, value in pending.items():
            getattr(self, name).copy_(value)

    def cap_latent(self,
                   z: torch.Tensor,
                   mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``z`` ``(B, C, *spatial)`` capped to a mean l2 norm ``<= n_max``
        by this quantizer's ``latent_norm_stat`` (``mix_mode='unicode'``),
        for a container that caps once before calling a quantizer built
        with ``cap_latent_norm=False`` (the official RQ-VAE,
        ``RQGenerator.encode``). In training (codebook not frozen) it
        updates ``r`` (and the running mean) at once, as the official
        ``post_len_l2norm`` set before the residual depths. The cap is
        differentiable; the result has ``z``'s dtype."""
        if self.mix_mode != 'unicode':
            raise ValueError("cap_latent needs mix_mode='unicode', got "
                             f'mix_mode={self.mix_mode!r}')
        check_latent(z, self.in_channels, mask, min_spatial_dims=1)
        flat, index_shape = flatten_channels_last(z)
        with torch.autocast(flat.device.type, enabled=False):
            capped, pending, _ = self._control_latent_norm(
                flat.float(), index_shape, mask, self._updates_codebook())
        self._apply_pending(pending)
        return unflatten_channels_first(capped, index_shape).to(z.dtype)

    def _updates_codebook(self) -> bool:
        """Whether a forward now may change the codebook (training and,
        with an external codebook, not frozen)."""
        return self.training and not (self.use_external_codebook
                                      and bool(self.codebook_frozen))

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

    def _unicode_latent(self, flat: torch.Tensor, index_shape,
                        mask: Optional[torch.Tensor], update: bool):
        """``mix_mode='unicode'``: ``(capped latent, look-up vectors =
        capped / s (detached), pending buffer updates, batch mean norm or
        None)`` of the code-space vectors ``flat``; the cap only with
        ``cap_latent_norm``."""
        with torch.autocast(flat.device.type, enabled=False):
            pending, latent_norm = {}, None
            if self.cap_latent_norm:
                flat, pending, latent_norm = self._control_latent_norm(
                    flat, index_shape, mask, update)
            return flat, flat.detach() / self.lookup_scale(), pending, \
                latent_norm

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Indices ``(B, *spatial)`` of ``z`` ``(B, C, *spatial)`` (no
        buffer changes, in training either)."""
        flat, index_shape = self._to_code_space(z)
        if self.mix_mode == 'unicode':
            _, flat, _, _ = self._unicode_latent(flat, index_shape, None,
                                                 update=False)
        return self._nearest(flat, self.code_vectors()).reshape(index_shape)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Quantized latents ``(B, C, *spatial)`` of ``indices``
        ``(B, *spatial)``; an id outside ``[0, codebook_size)`` raises
        :class:`~.base.InvalidIndicesError` (never wrapped)."""
        flat = check_indices(indices, self.codebook_size).reshape(-1)
        codes = self._out_codes(self.code_vectors(), flat)
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

        update = self._updates_codebook()
        pending, latent_norm = {}, None
        if self.mix_mode == 'unicode':  # flat: the capped latent
            flat, lookup, pending, latent_norm = self._unicode_latent(
                flat, index_shape, mask, update)
        else:
            lookup = flat.detach()
        if update and self.kmeans_init and not self.kmeans_initialized:
            with torch.no_grad():
                self._kmeans_init(unmasked(flat.detach()))
        codes = self.code_vectors()
        indices = self._nearest(lookup, codes.detach())
        counts = torch.bincount(unmasked(indices),
                                minlength=self.codebook_size)
        num_restarted = None
        updates_ema = (self.ema_decay is not None
                       or self.restart_threshold is not None)
        if update and (updates_ema or pending):
            with torch.no_grad():
                if updates_ema:
                    num_restarted = self._update_codebook(
                        unmasked(flat.detach()), unmasked(indices), counts)
                self._apply_pending(pending)
            codes = self.code_vectors()
        q = self._out_codes(codes, indices)

        flat_kept, q_kept = unmasked(flat), unmasked(q)
        denominator = max(flat_kept.numel(), 1)  # 0 loss if all is masked
        loss = dict(loss_commitment=self.commitment_weight *
                    (flat_kept - q_kept.detach()).pow(2).sum() / denominator)
        frozen = self.frozen_codebook or (self.use_external_codebook
                                          and bool(self.codebook_frozen))
        if not frozen and self.ema_decay is None:
            loss['loss_codebook'] = self.codebook_weight * (
                q_kept - flat_kept.detach()).pow(2).sum() / denominator

        stats = usage_stats(counts)
        if num_restarted is not None:
            stats['restarted_codes'] = torch.tensor(float(num_restarted),
                                                    device=counts.device)
        if self.mix_mode == 'unicode':
            stats['latent_ratio'] = self.latent_ratio.detach().clone()
            if latent_norm is not None:
                stats['latent_norm'] = latent_norm

        if self.gradient_estimator == 'rotation_trick':
            out = rotation_trick(flat, q)
        else:
            out = straight_through(flat, q)
        return QuantizerOutput(
            quantized=self._from_code_space(out, index_shape),
            indices=indices.reshape(index_shape),
            loss=loss,
            stats=stats)
