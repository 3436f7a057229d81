"""Semantic regularisation of a quantized branch (ImageFolder, Li et al.
2025, "ImageFolder: Autoregressive Image Generation with Folded Tokens",
"semantic regularization"; reference notes B.2, ``semantic_guide``).

A frozen DINOv2 sees the input image; its projected class token ``t`` and
the spatial mean ``q`` of one branch of the quantized map are pulled
together by a CLIP-style symmetric InfoNCE over the batch (the official
``ClipLoss`` of ``tokenizer/vqgan/cliploss.py``, open_clip's, as called in
``tokenizer/tokenizer_image/xqgan_model.py`` with ``local_loss=False,
gather_with_grad=True``). Only one branch is regularised so the other can
carry pixel detail (the paper's ablation: one branch 1.57 rFID / 3.53 gFID,
all branches 1.97 / 5.21).
"""
from typing import Callable, Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.registry import BACKBONES, LOSSES
from vistok.utils.dist import all_gather_with_grad
from vistok.utils.weights import MissingWeightsError

#: the ImageNet statistics the official code normalises the DINOv2 input
#: with (``ImgNormalize`` in ``xqgan_model.py``)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: ImageFolder's teacher: DINOv2 ViT-B/14 re-created at 256 px with patch
#: 16 (``create_model(encoder_model, img_size=256, patch_size=16)``), the
#: same network and weights file as the tokenizer's encoder.
DEFAULT_TEACHER = dict(model_name='vit_base_patch14_dinov2.lvd142m',
                       model_kwargs=dict(img_size=256, patch_size=16))

#: what the loss needs of its :class:`TimmBackbone` teacher: the last
#: block's tokens after the final norm, with the class token, frozen. The
#: class token after the final norm is what ``timm_model(x)`` returns for
#: DINOv2 (``num_classes=0``, ``global_pool='token'``), the official ``z_s``.
TEACHER_FIXED = dict(out_indices=-1, norm=True, keep_prefix_tokens=True,
                     frozen=True)

PROJECTORS = ('separate', 'shared_quant_conv')

Projection = Callable[[torch.Tensor], torch.Tensor]


@LOSSES.register_module()
class SemanticRegularizationLoss(nn.Module):
    """CLIP-style InfoNCE between a frozen teacher's class token and the
    mean of one quantized branch (ImageFolder's semantic regularization).

    With ``t_i`` the projected teacher feature and ``q_i`` the branch
    feature of the ``N`` samples of the batch *gathered over all ranks*,
    and logits ``S = s · t qᵀ`` ``(N, N)``::

        L = loss_weight · ½ [CE(S, I) + CE(Sᵀ, I)]

    (cross-entropy averaged over rows, labels on the diagonal).

    * ``t``: the class token ``(B, D)`` of the frozen teacher
      (:class:`~vistok.models.backbones.timm_wrapper.TimmBackbone`, last
      block after the final norm) of the images mapped from ``[-1, 1]`` to
      ``mean`` / ``std``, then projected to ``C`` channels by
      ``projector``:

      - ``'separate'`` (default): an own trainable ``Linear(D, C)``. The
        official code projects with the tokenizer's ``quant_conv``, which
        couples the target to a trained layer (both sides can collapse
        together; reference notes B.7); a separate projector avoids that.
      - ``'shared_quant_conv'`` (official): the caller passes the
        tokenizer's projection as ``project`` at every call; it receives
        ``t`` as a 1×1 map ``(B, D, 1, 1)`` (the official
        ``quant_conv(z_s[..., None, None])``, so a 1×1 ``nn.Conv2d`` works
        as it is) and returns ``(B, C, *ones)`` or ``(B, C)``.
    * ``q``: the spatial mean of the channels of ``target`` in the
      quantized map ``(B, P·C, *spatial)`` (``P = num_branches`` groups of
      ``C = branch_channels``, the layout of
      :class:`~vistok.models.quantizers.ProductQuantizer`):

      - an int branch index (official: ``-1``, the last branch);
      - ``'all'`` -- *inferred*, not in the official code (whose
        ``sem_linear`` for this case is built but never used): the mean of
        all ``P·C`` channels through a trainable ``Linear(P·C, C)`` (a 1×1
        projection of the concatenated branches; the README's ablation row
        5, "semantic regularisation on all branches");
      - ``'none'``: no regularisation; no teacher is built and the loss is
        a zero connected to ``quantized``.
    * ``s``: ``logit_scale`` on unnormalised features (official MSVR10P2:
      1.0), or, with ``clip_norm``, l2-normalised features and ``s`` ramped
      linearly from ``logit_scale`` to ``final_logit_scale`` over
      ``ramp_iters`` iterations (official: to 100 over 200 epochs), then
      kept there.

    **Quantizer dropout**: samples with ``num_scales < total_scales`` (a
    multi-scale quantizer's ``stats['num_scales']``) are excluded, as the
    official code excludes its dropped samples (it drops the first
    ``int(codebook_drop · B)`` samples, whether or not their draw kept
    every scale; here exactly the samples that lost scales).

    **Ranks**: ``t`` and ``q`` of the kept samples are gathered over the
    ranks with gradient (:func:`~vistok.utils.dist.all_gather_with_grad`)
    and every rank computes the full ``N × N`` loss, so the loss is the one
    of a single process holding the whole batch, and rank-averaged
    parameter gradients (DDP) are that process's gradients. The batch sizes
    of the ranks may differ.

    **Fewer than 2 kept samples in the whole batch** (InfoNCE needs a
    negative): the loss is ``0 · (Σt + Σq)``, a zero that is connected to
    the projector and to ``quantized``, so every parameter that normally
    gets a gradient gets one (zeros) and DDP without
    ``find_unused_parameters`` does not stall. Every rank takes this branch
    together (the count is global).

    The teacher and the loss math run in fp32 with autocast disabled; the
    teacher runs without gradient. Nothing flows into the codebooks: the
    quantized map carries the straight-through gradient to the encoder.

    Args:
        num_branches: ``P``, branches of the quantized map.
        branch_channels: ``C``, channels of each branch (the projection
            width).
        target: ``'none'``, a branch index (negative counts from the end)
            or ``'all'``.
        projector: ``'separate'`` or ``'shared_quant_conv'``.
        teacher: :class:`TimmBackbone` config without ``weights_path``
            (default: DINOv2 ViT-B at 256 px, patch 16); ``type`` may be
            omitted, and ``out_indices``, ``norm``, ``keep_prefix_tokens``,
            ``frozen`` are set by the loss (``TEACHER_FIXED``).
        teacher_weights_path: the teacher's timm state dict file, read by
            :meth:`init_weights` only (the same file as the encoder's in
            ImageFolder's configs).
        logit_scale: ``s`` (or its start with ``clip_norm``).
        clip_norm: l2-normalise ``t`` and ``q`` and ramp ``s``.
        final_logit_scale: ``s`` at the end of the ramp.
        ramp_iters: length of the ramp in iterations (``clip_norm`` only;
            0 starts at ``final_logit_scale``).
        mean, std: normalisation of the teacher's input in ``[0, 1]``.
        loss_weight: multiplier of the loss (0.1 in ImageFolder).
        loss_name: name under which an algorithm logs this term.
    """

    def __init__(self,
                 num_branches: int,
                 branch_channels: int,
                 target: Union[str, int] = -1,
                 projector: str = 'separate',
                 teacher: Optional[Dict] = None,
                 teacher_weights_path: Optional[str] = None,
                 logit_scale: float = 1.0,
                 clip_norm: bool = False,
                 final_logit_scale: float = 100.0,
                 ramp_iters: Optional[int] = None,
                 mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD,
                 loss_weight: float = 0.1,
                 loss_name: str = 'loss_semantic'):
        super().__init__()
        if 'loss' not in loss_name:
            raise ValueError(f'loss_name must contain "loss" to be part of '
                             f'the total loss, got {loss_name!r}')
        for key, value in (('num_branches', num_branches),
                           ('branch_channels', branch_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'{key} must be a positive int, got '
                                 f'{value!r}')
        if isinstance(target, bool) or not (
                target in ('none', 'all') or isinstance(target, int)):
            raise ValueError(f"target must be 'none', 'all' or a branch "
                             f'index, got {target!r}')
        if isinstance(target, int):
            if not -num_branches <= target < num_branches:
                raise ValueError(f'target={target} is not a branch index of '
                                 f'num_branches={num_branches}')
            target %= num_branches
        if projector not in PROJECTORS:
            raise ValueError(f'projector must be one of {PROJECTORS}, got '
                             f'{projector!r}')
        if clip_norm and (not isinstance(ramp_iters, int) or ramp_iters < 0):
            raise ValueError(f'clip_norm=True needs ramp_iters, a '
                             f'non-negative int, got {ramp_iters!r}')
        self.num_branches = num_branches
        self.branch_channels = branch_channels
        self.target = target
        self.projector_type = projector
        self.teacher_weights_path = teacher_weights_path
        self.logit_scale = logit_scale
        self.clip_norm = clip_norm
        self.final_logit_scale = final_logit_scale
        self.ramp_iters = ramp_iters
        self.loss_weight = loss_weight
        self.loss_name = loss_name
        self.teacher = self.projector = self.branch_mixer = None
        if target == 'none':
            return
        self.teacher = self.build_teacher(teacher or DEFAULT_TEACHER)
        teacher_channels = self.teacher.model.num_features
        if projector == 'separate':
            self.projector = nn.Linear(teacher_channels, branch_channels)
        if target == 'all':
            self.branch_mixer = nn.Linear(num_branches * branch_channels,
                                          branch_channels)
        self.register_buffer('mean',
                             torch.tensor(mean).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer('std',
                             torch.tensor(std).view(1, -1, 1, 1),
                             persistent=False)

    @staticmethod
    def build_teacher(teacher: Dict) -> nn.Module:
        """The frozen :class:`TimmBackbone` of ``teacher`` with
        ``TEACHER_FIXED`` (built through the registry: losses do not import
        backbones)."""
        if 'weights_path' in teacher:
            raise ValueError('teacher must not hold weights_path: set the '
                             'loss key teacher_weights_path instead')
        cfg = dict(type='TimmBackbone')
        cfg.update(teacher)
        cfg.update(TEACHER_FIXED)
        return BACKBONES.build(cfg)

    def init_weights(self) -> None:
        """Load the teacher from ``teacher_weights_path``
        (:class:`~vistok.utils.weights.MissingWeightsError` naming that key
        when the file is missing)."""
        if self.teacher is None:
            return
        self.teacher.weights_path = self.teacher_weights_path
        try:
            self.teacher.init_weights()
        except MissingWeightsError as err:
            raise MissingWeightsError(self.teacher_weights_path,
                                      'teacher_weights_path',
                                      err.how_to_get) from None

    def current_logit_scale(self, iteration: Optional[int]) -> float:
        """``s`` at ``iteration``: ``logit_scale``, or with ``clip_norm``
        the linear ramp to ``final_logit_scale`` over ``ramp_iters``."""
        if not self.clip_norm:
            return self.logit_scale
        if iteration is None:
            raise ValueError('clip_norm=True ramps the logit scale: pass '
                             'the training iteration')
        progress = (1.0 if self.ramp_iters == 0 else
                    min(iteration / self.ramp_iters, 1.0))
        return self.logit_scale + progress * (self.final_logit_scale -
                                              self.logit_scale)

    @torch.no_grad()
    def teacher_features(self, images: torch.Tensor) -> torch.Tensor:
        """Class token ``(B, D)`` of the frozen teacher for ``images``
        ``(B, 3, H, W)`` in ``[-1, 1]``."""
        x = ((images.float() + 1) / 2 - self.mean) / self.std
        _, prefix = self.teacher(x)
        return prefix[:, :, 0]

    def branch_features(self, quantized: torch.Tensor) -> torch.Tensor:
        """``q`` ``(B, C)``: the spatial mean of the target branch of
        ``quantized`` ``(B, P·C, *spatial)`` (through the branch mixer for
        ``target='all'``)."""
        spatial = tuple(range(2, quantized.dim()))
        if self.target == 'all':
            return self.branch_mixer(quantized.mean(spatial))
        start = self.target * self.branch_channels
        return quantized[:, start:start + self.branch_channels].mean(spatial)

    def project_teacher(self, t: torch.Tensor,
                        project: Optional[Projection]) -> torch.Tensor:
        """``t`` ``(B, D)`` → ``(B, C)`` by the own projector or by the
        caller's ``project`` (given a ``(B, D, 1, 1)`` map)."""
        if self.projector_type == 'separate':
            if project is not None:
                raise ValueError("projector='separate' projects with its "
                                 'own Linear: do not pass project')
            return self.projector(t)
        if project is None:
            raise ValueError("projector='shared_quant_conv' needs the "
                             "tokenizer's projection: pass project=")
        out = project(t[:, :, None, None])
        out = out.reshape(out.shape[0], -1)
        if out.shape != (t.shape[0], self.branch_channels):
            raise ValueError(
                f'project mapped the teacher feature (B, D, 1, 1) = '
                f'{(*t.shape, 1, 1)} to {tuple(out.shape)} values per '
                f'sample; expected (B, branch_channels) = '
                f'{(t.shape[0], self.branch_channels)}')
        return out

    def check_inputs(self, images: torch.Tensor, quantized: torch.Tensor,
                     num_scales: Optional[torch.Tensor],
                     total_scales: Optional[int]) -> None:
        width = self.num_branches * self.branch_channels
        if quantized.dim() < 3 or quantized.shape[1] != width:
            raise ValueError(
                f'quantized must be (B, num_branches·branch_channels = '
                f'{width}, *spatial), got {tuple(quantized.shape)}')
        if (images.dim() != 4 or images.shape[1] != 3
                or images.shape[0] != quantized.shape[0]):
            raise ValueError(
                f'images must be (B, 3, H, W) with the B = '
                f'{quantized.shape[0]} of quantized, got '
                f'{tuple(images.shape)}')
        if num_scales is None:
            return
        if num_scales.shape != (quantized.shape[0], ):
            raise ValueError(f'num_scales must be (B,) = '
                             f'({quantized.shape[0]},), got '
                             f'{tuple(num_scales.shape)}')
        if not isinstance(total_scales, int) or total_scales < 1:
            raise ValueError(f'num_scales needs total_scales, the number of '
                             f'scales of the quantizer, got {total_scales!r}')

    def forward(self,
                images: torch.Tensor,
                quantized: torch.Tensor,
                num_scales: Optional[torch.Tensor] = None,
                total_scales: Optional[int] = None,
                project: Optional[Projection] = None,
                iteration: Optional[int] = None) -> torch.Tensor:
        """Weighted scalar loss.

        Args:
            images: ``(B, 3, H, W)`` in ``[-1, 1]`` (the tokenizer's input;
                ``H, W`` the teacher's image size).
            quantized: ``(B, P·C, *spatial)``, the quantizer's output.
            num_scales: optional ``(B,)`` kept scales per sample (a
                quantizer-dropout draw, ``stats['num_scales']``); samples
                below ``total_scales`` are excluded.
            total_scales: the quantizer's number of scales (with
                ``num_scales``).
            project: the tokenizer's projection, with
                ``projector='shared_quant_conv'`` only.
            iteration: training iteration (the ramp of ``clip_norm``).
        """
        self.check_inputs(images, quantized, num_scales, total_scales)
        if self.target == 'none':
            return quantized.sum() * 0.0
        scale = self.current_logit_scale(iteration)
        with torch.autocast(device_type=quantized.device.type, enabled=False):
            t = self.project_teacher(self.teacher_features(images), project)
            q = self.branch_features(quantized.float())
            features = torch.cat([t.float(), q], dim=1)
            if num_scales is not None:
                features = features[num_scales >= total_scales]
            features = all_gather_with_grad(features)
            if features.shape[0] < 2:
                return (t.sum() + q.sum()) * 0.0
            t, q = features.split(self.branch_channels, dim=1)
            if self.clip_norm:
                t, q = F.normalize(t, dim=1), F.normalize(q, dim=1)
            logits = scale * t @ q.T
            labels = torch.arange(logits.shape[0], device=logits.device)
            loss = (F.cross_entropy(logits, labels) +
                    F.cross_entropy(logits.T, labels)) / 2
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        scale = (f'logit_scale={self.logit_scale}' if not self.clip_norm else
                 f'clip_norm, logit_scale {self.logit_scale} -> '
                 f'{self.final_logit_scale} over {self.ramp_iters} iters')
        return (f'target={self.target!r}, projector={self.projector_type!r}, '
                f'branches={self.num_branches}x{self.branch_channels}, '
                f'{scale}, loss_weight={self.loss_weight}')
