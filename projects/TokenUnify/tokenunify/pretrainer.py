"""TokenUnify pre-training: random token, next-token and next-all-token
prediction on voxel tokens of EM volumes (Chen et al., "TokenUnify",
arXiv 2405.16847; v2 objective L = α·L_random + β·L_next + γ·L_next-all).

Every task corrupts the crop ``x`` ``(B, 1, D, H, W)`` in [0, 1] at the
token level (:mod:`.tokens`), runs the backbone on the full-size corrupted
volume and regresses ``sigmoid(logits)`` onto the clean voxels with an MSE
(the Gaussian likelihood of the paper's losses on [0, 1] intensities). With
input perturbations in the pipeline (noise / blur / cutout, as the official
providers) ``x`` is perturbed and the target is the unperturbed crop, the
samples' ``gt_volume`` (:func:`targets`); otherwise the target is ``x``:

* ``random`` (SimMIM-style): a random set of tokens is overwritten; target
  the clean crop over all voxels (official) or only the masked ones.
* ``next_token``: the tokens ``≥ n`` (``n`` drawn per sample) are overwritten;
  target token ``n`` (a ``tz×ty×tx`` block) in raster order.
* ``next_all``: same input; target every token ``≥ n`` (``loss_on='masked'``,
  the paper's definition) or the whole crop (``'all'``, the official code).

``next_token`` and ``next_all`` share one prefix draw and one backbone pass
per iteration (the official "joint" mode, ``--auto_mode 1``).

**Next-token head.** Token ``n`` is predicted by a head with its own
parameters (:mod:`.heads`, ``model.head``) from the backbone output channel
``tasks.next_token.channel`` and, for the default
:class:`~.heads.TokenUnifyPerceiverHead` (``head='perceiver'``), the index
``n`` itself, so the next-token loss is not a restriction of the next-all
loss to token ``n`` of the same tensor. ``head='official'`` is the released
``Preciever`` (:class:`~.heads.TokenUnifyPreceiverHead`, 16×160×160 crops
only, blind to ``n``). The head lives under ``next_token_head.`` in the
checkpoint; fine-tuning drops it by that name (``allow_unexpected``).

**Mixing.** ``loss()`` computes every task whose current weight is non-zero
and sums ``w_t · L_t``. The weights come from ``task_weights`` or, each
iteration, from :class:`~.schedule_hook.TaskWeightScheduleHook` through
:meth:`TokenUnifyPretrainer.set_task_weights`: the v2 paper's weighted
curriculum, or the released code's sequential stages (weight 1 for the
stage's tasks, 0 for the others; the official ``auto_mode=0`` switch is dead
code: the epoch never reaches the model).

**PSNR.** The official ``calc_psnr`` returns ``10·log10(1 / √MSE)``, i.e.
half the true value. Here ``PSNR = 10·log10(1 / MSE)`` (data range 1 on
[0, 1] volumes), per sample, over all voxels and over the masked voxels:
``predict`` returns each crop's reconstruction, clean crop and voxel mask,
and :class:`TokenUnifyPSNR` computes the PSNRs from them.
"""
import copy
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel

from vistok.evaluation.metrics.psnr import psnr
from vistok.models.utils.optimizer_step import NonFiniteGuard, update_params
from vistok.registry import BACKBONES, HEADS, METRICS, MODELS
from vistok.structures import DataSample
from vistok.utils.partial_load import load_pretrained
from .heads import TokenUnifyPerceiverHead, TokenUnifyPreceiverHead
from .tokens import (
    FILL_MODES,
    check_ratio_range,
    draw_prefix_lengths,
    fill_hidden,
    gather_tokens,
    prefix_token_mask,
    random_token_mask,
    size3,
    token_grid,
    tokens_to_voxels,
)

#: task names, in the order of the paper's α, β, γ
TASKS = ('random', 'next_token', 'next_all')
PREFIX_TASKS = ('next_token', 'next_all')
LOSS_ON = ('all', 'masked')
#: ``model.head`` shortcuts → registered :mod:`.heads` types
HEAD_SHORTCUTS = dict(official=TokenUnifyPreceiverHead.__name__,
                      perceiver=TokenUnifyPerceiverHead.__name__)


def _check_choice(value, choices, key: str) -> None:
    if value not in choices:
        raise ValueError(f'{key} must be one of {choices}, got {value!r}')


def _check_channel(channel, key: str) -> None:
    if not isinstance(channel, int) or channel < 0:
        raise ValueError(f'{key} must be a non-negative int, got {channel!r}')


@dataclass(frozen=True)
class RandomTokenTask:
    """``tasks.random``: exactly one of ``mask_ratio`` (fixed ρ; official
    launcher 0.4) and ``mask_ratio_range`` (ρ ~ U(low, high) per sample;
    official otherwise (0.2, 0.8)); each sample hides
    ``floor(ρ·N + 0.5)`` tokens. ``fill`` is a :data:`.tokens.FILL_MODES`
    mode (official: 'noise'); ``loss_on`` 'all' (official) or 'masked';
    ``channel``: the output channel holding the reconstruction."""
    mask_ratio: Optional[float] = None
    mask_ratio_range: Optional[Tuple[float, float]] = None
    fill: str = 'noise'
    loss_on: str = 'all'
    channel: int = 0

    def __post_init__(self):
        if (self.mask_ratio is None) == (self.mask_ratio_range is None):
            raise ValueError('tasks.random needs exactly one of mask_ratio '
                             '(fixed) and mask_ratio_range (drawn per sample)')
        if self.mask_ratio is not None:
            if not 0.0 <= self.mask_ratio <= 1.0:
                raise ValueError(f'tasks.random.mask_ratio must lie in '
                                 f'[0, 1], got {self.mask_ratio}')
        else:
            object.__setattr__(self, 'mask_ratio_range',
                               check_ratio_range(self.mask_ratio_range))
        _check_choice(self.fill, FILL_MODES, 'tasks.random.fill')
        _check_choice(self.loss_on, LOSS_ON, 'tasks.random.loss_on')
        _check_channel(self.channel, 'tasks.random.channel')


@dataclass(frozen=True)
class NextTokenTask:
    """``tasks.next_token``: ``channel``, the backbone output channel the
    next-token head reads."""
    channel: int = 0

    def __post_init__(self):
        _check_channel(self.channel, 'tasks.next_token.channel')


@dataclass(frozen=True)
class NextAllTask:
    """``tasks.next_all``: ``loss_on`` 'all' (official: the whole crop,
    prefix included) or 'masked' (the tokens ``≥ n``); ``channel``."""
    loss_on: str = 'all'
    channel: int = 0

    def __post_init__(self):
        _check_choice(self.loss_on, LOSS_ON, 'tasks.next_all.loss_on')
        _check_channel(self.channel, 'tasks.next_all.channel')


@dataclass(frozen=True)
class PrefixConfig:
    """``prefix``: the corruption shared by ``next_token`` / ``next_all``.
    ``n`` is uniform on ``{min_length, ..., max_length}`` (default
    ``N − 1``; official {1, ..., 399}); tokens ``≥ n`` get ``fill``
    (official 'noise', ``--fill_nose``)."""
    fill: str = 'noise'
    min_length: int = 1
    max_length: Optional[int] = None

    def __post_init__(self):
        _check_choice(self.fill, FILL_MODES, 'prefix.fill')
        if not isinstance(self.min_length, int) or self.min_length < 0:
            raise ValueError(f'prefix.min_length must be an int >= 0, got '
                             f'{self.min_length!r}')
        if self.max_length is not None and not (
                isinstance(self.max_length, int)
                and self.max_length >= self.min_length):
            raise ValueError(f'prefix.max_length must be None or an int >= '
                             f'prefix.min_length={self.min_length}, got '
                             f'{self.max_length!r}')


TASK_CLASSES = dict(random=RandomTokenTask, next_token=NextTokenTask,
                    next_all=NextAllTask)


def _from_cfg(cls, cfg: Optional[dict], key: str):
    try:
        return cls(**(cfg or {}))
    except TypeError as err:
        raise TypeError(f'{key}: {err}') from None


def targets(inputs: torch.Tensor,
            data_samples: Optional[Sequence[DataSample]] = None
            ) -> torch.Tensor:
    """The regression targets of ``inputs`` ``(B, 1, D, H, W)``: the
    samples' ``gt_volume`` ``(1, D, H, W)`` stacked (the clean crops of a
    pipeline that perturbs the inputs, packed by ``PackEMInputs`` from
    ``raw_target``) when every sample has one, ``inputs`` when none has."""
    have = [s is not None and 'gt_volume' in s for s in data_samples or ()]
    if not any(have):
        return inputs
    if not all(have) or len(have) != inputs.shape[0]:
        raise ValueError(f'{sum(have)} of {inputs.shape[0]} samples carry a '
                         f'gt_volume (clean target): put the input '
                         f'perturbations in every sample\'s pipeline')
    target = torch.stack([s.gt_volume for s in data_samples]).to(
        device=inputs.device, dtype=inputs.dtype)
    if target.shape != inputs.shape:
        raise ValueError(f'gt_volume batch {tuple(target.shape)} does not '
                         f'match the inputs {tuple(inputs.shape)}')
    return target


def masked_mse(pred: torch.Tensor, target: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared error in fp32 over all voxels of ``(B, C, *spatial)``,
    or over the voxels where ``mask`` (broadcastable bool) is ``True``
    (0 when the mask is empty)."""
    with torch.autocast(device_type=pred.device.type, enabled=False):
        error = (pred.float() - target.float()).pow(2)
        if mask is None:
            return error.mean()
        mask = mask.expand_as(error).float()
        return (error * mask).sum() / mask.sum().clamp_min(1.0)


@MODELS.register_module()
class TokenUnifyPretrainer(BaseModel):
    """TokenUnify's mixture-of-tasks pre-training of a volume backbone (see
    the module docstring for the tasks, the next-token head, the mixing
    and the PSNR of :class:`TokenUnifyPSNR`).

    Inputs are crops ``(B, 1, D, H, W)`` in [0, 1], with their clean
    targets as the samples' ``gt_volume`` if perturbed
    (``VolumeDataPreprocessor``) with ``D, H, W`` multiples of ``token_size``
    (and of whatever the backbone needs, e.g. 16 for EMMamba). Masks are drawn
    from the global RNG in training and, in ``predict``, from a generator
    seeded by ``(val_seed, sample_idx)`` so validation sees the same masks
    every time.

    ``loss`` returns, per active task, ``loss_<task>`` (``w·L``, summed into
    the total), ``mse_<task>`` (``L``) and, for every configured task,
    ``weight_<task>``.

    Args:
        backbone: BACKBONES config (or module), ``(B, 1, D, H, W)`` →
            logits ``(B, out_channels, D, H, W)``.
        tasks: any non-empty subset of ``dict(random=dict(...),
            next_token=dict(...), next_all=dict(...))``; see
            :class:`RandomTokenTask`, :class:`NextTokenTask`,
            :class:`NextAllTask`.
        task_weights: initial weights (default 1 for every configured task);
            a schedule hook replaces them every iteration.
        prefix: :class:`PrefixConfig` of the next-token / next-all input.
        head: the next-token head (only with ``tasks.next_token``):
            ``'perceiver'`` (default), ``'official'`` (see
            :data:`HEAD_SHORTCUTS`), a HEADS config (``token_size``
            defaults to the model's) or a module; called as
            ``head(output_channel, n)`` → token logits
            ``(B, 1, tz, ty, tx)``.
        token_size: ``(tz, ty, tx)`` voxels per token (paper: 4×16×16).
        noise_mean, noise_std: the 'noise' fill N(mean, std²) (official
            N(0, 1)).
        val_mask_ratio: ρ of the random task in ``predict`` (default: the
            task's ``mask_ratio``, or the middle of its range).
        val_seed: seed of the validation masks.
        max_nonfinite_skips: abort once more updates than this had a
            non-finite loss.
        pretrained: keyword arguments of
            :func:`vistok.utils.partial_load.load_pretrained`, applied in
            ``init_weights`` after the random initialisation: e.g. stage 2
            of the sequential recipe starts from stage 1's checkpoint with
            ``allow_missing=['next_token_head[.].*']`` (stage 1 trained no
            head); anything else that does not fit is an error. Only the
            weights: the optimizer and schedule start afresh.
        data_preprocessor: MODELS config (vistok scope) or module; default
            :class:`~vistok.models.data_preprocessors.volume.
            VolumeDataPreprocessor`.
        init_cfg: mmengine weight-initialisation config.
    """

    #: FSDP units (``vistok.engine.fsdp``): the Mamba layers and the
    #: decoder's MONAI blocks (else the decoder is one large unit)
    FSDP_BLOCK_TYPES = ('EMMambaLayer', 'UnetrBasicBlock', 'UnetrUpBlock')


    #: ``train_step`` averages gradients over ranks itself
    syncs_gradients = True

    def __init__(self,
                 backbone: Union[dict, nn.Module],
                 tasks: Dict[str, dict],
                 task_weights: Optional[Dict[str, float]] = None,
                 prefix: Optional[dict] = None,
                 head: Optional[Union[str, dict, nn.Module]] = None,
                 token_size: Sequence[int] = (4, 16, 16),
                 noise_mean: float = 0.0,
                 noise_std: float = 1.0,
                 val_mask_ratio: Optional[float] = None,
                 val_seed: int = 0,
                 max_nonfinite_skips: int = 10,
                 pretrained: Optional[dict] = None,
                 data_preprocessor: Optional[Union[dict, nn.Module]] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        super().__init__(
            data_preprocessor=MODELS.build_or_take(
                data_preprocessor, dict(type='VolumeDataPreprocessor')),
            init_cfg=init_cfg)
        self.backbone = BACKBONES.build_or_take(backbone)
        self.pretrained = copy.deepcopy(pretrained)
        unknown = set(tasks) - set(TASKS)
        if not tasks or unknown:
            raise ValueError(f'tasks must be a non-empty subset of {TASKS}, '
                             f'got {sorted(tasks)}')
        self.tasks = {
            name: _from_cfg(TASK_CLASSES[name], tasks[name], f'tasks.{name}')
            for name in TASKS if name in tasks
        }
        has_prefix_task = any(t in self.tasks for t in PREFIX_TASKS)
        if prefix is not None and not has_prefix_task:
            raise ValueError('prefix is set but neither next_token nor '
                             'next_all is in tasks')
        self.prefix = (_from_cfg(PrefixConfig, prefix, 'prefix')
                       if has_prefix_task else None)
        self.token_size = size3(token_size, 'token_size')
        self.noise_mean, self.noise_std = noise_mean, noise_std
        self._check_channels(getattr(self.backbone, 'out_channels', None))
        self.next_token_head = self._build_head(head)

        fills = [getattr(cfg, 'fill', None) for cfg in
                 list(self.tasks.values()) + [self.prefix]]
        self.mask_token = (nn.Parameter(torch.zeros(1, *self.token_size))
                           if 'learned' in fills else None)

        random_task = self.tasks.get('random')
        if val_mask_ratio is None and random_task is not None:
            val_mask_ratio = (random_task.mask_ratio
                              if random_task.mask_ratio is not None else
                              sum(random_task.mask_ratio_range) / 2)
        if val_mask_ratio is not None and not 0.0 < val_mask_ratio <= 1.0:
            raise ValueError(f'val_mask_ratio must lie in (0, 1], got '
                             f'{val_mask_ratio}')
        self.val_mask_ratio, self.val_seed = val_mask_ratio, val_seed
        self._task_weights: Dict[str, float] = {}
        self.set_task_weights(task_weights if task_weights is not None else
                              {name: 1.0 for name in self.tasks})
        self.nonfinite_guard = NonFiniteGuard(max_nonfinite_skips)

    def init_weights(self) -> None:
        """Random initialisation, then the ``pretrained`` weights."""
        super().init_weights()
        if self.pretrained:
            load_pretrained(self, key='model.pretrained.checkpoint',
                            **self.pretrained)

    def _check_channels(self, out_channels: Optional[int]) -> None:
        if out_channels is None:
            return
        for name, task in self.tasks.items():
            if task.channel >= out_channels:
                raise ValueError(
                    f'tasks.{name}.channel={task.channel} but the backbone '
                    f'outputs {out_channels} channel(s)')

    def _build_head(self, head) -> Optional[nn.Module]:
        if 'next_token' not in self.tasks:
            if head is not None:
                raise ValueError('model.head is set but next_token is not '
                                 'in tasks')
            return None
        if head is None:
            head = 'perceiver'
        if isinstance(head, str):
            if head not in HEAD_SHORTCUTS:
                raise ValueError(f'model.head must be one of '
                                 f'{tuple(HEAD_SHORTCUTS)}, a HEADS config '
                                 f'or a module, got {head!r}')
            head = dict(type=HEAD_SHORTCUTS[head])
        if isinstance(head, dict):
            head = dict(head)
            head.setdefault('token_size', self.token_size)
        head = HEADS.build_or_take(head)
        head_tokens = getattr(head, 'token_size', self.token_size)
        if tuple(head_tokens) != self.token_size:
            raise ValueError(f'model.head.token_size={tuple(head_tokens)} '
                             f'but model.token_size={self.token_size}')
        return head

    # --- task weights ------------------------------------------------------
    @property
    def task_weights(self) -> Dict[str, float]:
        """Current weight of every configured task."""
        return dict(self._task_weights)

    def set_task_weights(self, weights: Dict[str, float]) -> None:
        """Replace the task weights (called by ``TaskWeightScheduleHook``
        before every training iteration). Configured tasks missing from
        ``weights`` get 0; a non-zero weight for a task that is not
        configured is an error."""
        new = {name: 0.0 for name in self.tasks}
        for name, weight in weights.items():
            weight = float(weight)
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f'task weight {name}={weight} must be a '
                                 f'finite number >= 0')
            if name not in self.tasks:
                if name not in TASKS:
                    raise ValueError(f'unknown task {name!r} in the task '
                                     f'weights; tasks are {TASKS}')
                if weight != 0:
                    raise ValueError(
                        f'task weight {name}={weight} but {name!r} is not '
                        f'in model.tasks {tuple(self.tasks)}')
                continue
            new[name] = weight
        self._task_weights = new

    # --- corrupted inputs --------------------------------------------------
    def _fill(self, clean: torch.Tensor, voxel_mask: torch.Tensor,
              mode: str, generator: Optional[torch.Generator] = None
              ) -> torch.Tensor:
        return fill_hidden(clean, voxel_mask, mode, generator,
                           learned=self.mask_token,
                           noise_mean=self.noise_mean,
                           noise_std=self.noise_std)

    def _grid(self, volume: torch.Tensor) -> Tuple[int, int, int]:
        if volume.dim() != 5:
            raise ValueError(f'inputs must be volumes (B, C, D, H, W), got '
                             f'shape {tuple(volume.shape)}')
        return token_grid(volume.shape[2:], self.token_size)

    def _prediction(self, logits: torch.Tensor, task: str) -> torch.Tensor:
        """``sigmoid`` (fp32) of the output channel of ``task``,
        ``(B, 1, D, H, W)``."""
        channel = self.tasks[task].channel
        if channel >= logits.shape[1]:
            raise ValueError(f'tasks.{task}.channel={channel} but the '
                             f'backbone output has shape '
                             f'{tuple(logits.shape)}')
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return torch.sigmoid(logits[:, channel:channel + 1].float())

    # --- Runner entry points -----------------------------------------------
    def forward(self,
                inputs: torch.Tensor,
                data_samples: Optional[List[DataSample]] = None,
                mode: str = 'tensor'):
        """``'tensor'``: backbone logits of ``inputs`` ``(B, 1, D, H, W)``;
        ``'loss'``: :meth:`loss`; ``'predict'``: :meth:`predict`."""
        if mode == 'tensor':
            return self.backbone(inputs)
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        raise ValueError(f'mode must be "tensor", "loss" or "predict", '
                         f'got {mode!r}')

    def loss(self, inputs: torch.Tensor,
             data_samples: Optional[List[DataSample]] = None
             ) -> Dict[str, torch.Tensor]:
        """Weighted task losses of crops ``inputs`` ``(B, 1, D, H, W)`` in
        [0, 1] (tasks with weight 0 are skipped). The regression target is
        the samples' ``gt_volume`` (the unperturbed crop of a pipeline with
        input perturbations, :func:`targets`), else ``inputs``."""
        active = {n: w for n, w in self._task_weights.items() if w > 0}
        if not active:
            raise ValueError(f'every task weight is 0 ({self._task_weights})'
                             f': nothing to train')
        target = targets(inputs, data_samples)
        mses = {}
        if 'random' in active:
            mses['random'] = self._random_task_mse(inputs, target)
        if active.keys() & set(PREFIX_TASKS):
            mses.update(self._prefix_task_mses(inputs, target, active))
        out = {}
        for name, mse in mses.items():
            out[f'loss_{name}'] = active[name] * mse
            out[f'mse_{name}'] = mse.detach()
        for name, weight in self._task_weights.items():
            out[f'weight_{name}'] = torch.tensor(weight, device=inputs.device)
        return out

    def _random_task_mse(self, inputs: torch.Tensor,
                         target: torch.Tensor) -> torch.Tensor:
        task = self.tasks['random']
        grid = self._grid(inputs)
        mask = random_token_mask(inputs.shape[0], math.prod(grid),
                                 task.mask_ratio, task.mask_ratio_range)
        voxels = tokens_to_voxels(mask.to(inputs.device), grid,
                                  self.token_size)
        pred = self._prediction(
            self.backbone(self._fill(inputs, voxels, task.fill)), 'random')
        return masked_mse(pred, target,
                          voxels if task.loss_on == 'masked' else None)

    def _prefix_task_mses(self, inputs: torch.Tensor, target: torch.Tensor,
                          active: Dict[str, float]) -> Dict[str, torch.Tensor]:
        """One prefix draw and one backbone pass for next-token and
        next-all."""
        grid = self._grid(inputs)
        lengths = draw_prefix_lengths(
            inputs.shape[0], math.prod(grid), self.prefix.min_length,
            self.prefix.max_length).to(inputs.device)
        voxels = tokens_to_voxels(prefix_token_mask(lengths, math.prod(grid)),
                                  grid, self.token_size)
        logits = self.backbone(self._fill(inputs, voxels, self.prefix.fill))
        mses = {}
        if 'next_token' in active:
            channel = self.tasks['next_token'].channel
            token_logits = self.next_token_head(
                logits[:, channel:channel + 1], lengths)
            with torch.autocast(device_type=logits.device.type,
                                enabled=False):
                pred = torch.sigmoid(token_logits.float())
            mses['next_token'] = masked_mse(
                pred, gather_tokens(target, lengths, self.token_size))
        if 'next_all' in active:
            pred = self._prediction(logits, 'next_all')
            masked = self.tasks['next_all'].loss_on == 'masked'
            mses['next_all'] = masked_mse(pred, target,
                                          voxels if masked else None)
        return mses

    def train_step(self, data, optim_wrapper) -> Dict[str, torch.Tensor]:
        """One update; non-finite losses are skipped and counted
        (:class:`~vistok.models.utils.optimizer_step.NonFiniteGuard`)."""
        data = self.data_preprocessor(data, True)
        with optim_wrapper.optim_context(self):
            losses = self.loss(data['inputs'], data.get('data_samples'))
        total, log_vars = self.parse_losses(losses)
        _, skipped = update_params(optim_wrapper, total,
                                   list(self.parameters()), losses,
                                   self.nonfinite_guard)
        log_vars['nonfinite_skips'] = torch.tensor(float(skipped))
        return log_vars

    # --- validation --------------------------------------------------------
    def validation_mask(self, num_tokens: int, sample_idx: int) -> Tuple[
            torch.Tensor, torch.Generator]:
        """The random-task token mask ``(N,)`` of validation sample
        ``sample_idx`` (a pure function of ``val_seed`` and ``sample_idx``)
        and the CPU generator that drew it (it then draws the fill)."""
        seed = np.random.SeedSequence([self.val_seed, sample_idx])
        generator = torch.Generator().manual_seed(
            int(seed.generate_state(1)[0]))
        mask = random_token_mask(1, num_tokens, self.val_mask_ratio,
                                 generator=generator)
        return mask[0], generator

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor,
                data_samples: Optional[List[DataSample]] = None
                ) -> List[DataSample]:
        """Random-token reconstruction of crops ``inputs``
        ``(B, 1, D, H, W)`` in [0, 1] with ``val_mask_ratio`` of the tokens
        masked (masks from :meth:`validation_mask`, keyed by the samples'
        ``sample_idx`` metainfo, else their batch position).

        One :class:`DataSample` per crop (``data_samples`` filled in place)
        with ``pred_volume`` (the reconstruction) and ``gt_volume`` (the
        target, :func:`targets`), ``(1, D, H, W)`` in [0, 1],
        ``token_mask`` ``(N,)`` bool (the masked tokens) and
        ``voxel_mask`` ``(1, D, H, W)`` bool (their voxels);
        :class:`TokenUnifyPSNR` reads them.
        """
        if 'random' not in self.tasks:
            raise ValueError('predict reports the random-token '
                             'reconstruction: add tasks.random to the model')
        task = self.tasks['random']
        grid = self._grid(inputs)
        if data_samples is None:
            data_samples = [DataSample() for _ in range(inputs.shape[0])]
        corrupted, masks = [], []
        for i, sample in enumerate(data_samples):
            mask, generator = self.validation_mask(
                math.prod(grid), int(sample.metainfo.get('sample_idx', i)))
            voxels = tokens_to_voxels(mask[None].to(inputs.device), grid,
                                      self.token_size)
            corrupted.append(self._fill(inputs[i:i + 1], voxels, task.fill,
                                        generator))
            masks.append(mask)
        masks = torch.stack(masks).to(inputs.device)
        voxels = tokens_to_voxels(masks, grid, self.token_size)
        pred = self._prediction(self.backbone(torch.cat(corrupted)), 'random')
        target = targets(inputs, data_samples)
        for i, sample in enumerate(data_samples):
            sample.pred_volume = pred[i]
            sample.gt_volume = target[i]
            sample.token_mask = masks[i]
            sample.voxel_mask = voxels[i]
        return data_samples


@METRICS.register_module()
class TokenUnifyPSNR(BaseMetric):
    """Mean over crops of the reconstruction PSNR of
    :meth:`TokenUnifyPretrainer.predict`: per crop,
    ``PSNR = 10·log10(data_range² / MSE)`` of ``pred_volume`` against
    ``gt_volume`` (:func:`vistok.evaluation.metrics.psnr.psnr`), i.e.
    ``10·log10(1 / MSE)`` on [0, 1] volumes. The official ``calc_psnr``
    computes ``10·log10(1 / √MSE)``, half the true value.

    Reports ``psnr_all`` (MSE over all voxels) and ``psnr_masked`` (over the
    ``voxel_mask`` voxels; crops with no masked voxel give NaN and are left
    out of the mean, which is NaN if no crop has one). A crop's PSNR is
    capped at ``max_psnr`` (a perfect reconstruction counts as
    ``max_psnr``).

    Args:
        data_range: maximum voxel value (1 for [0, 1] volumes).
        max_psnr: cap of a crop's PSNR in dB.
        collect_device, prefix: see ``mmengine.evaluator.BaseMetric``.
    """

    default_prefix = 'pretrain'

    def __init__(self,
                 data_range: float = 1.0,
                 max_psnr: float = 100.0,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.data_range, self.max_psnr = data_range, max_psnr

    def process(self, data_batch, data_samples) -> None:
        """Per crop, ``(psnr_all, psnr_masked)`` (only two floats are kept,
        not the volumes)."""
        for sample in data_samples:
            pred, target = sample['pred_volume'], sample['gt_volume']
            self.results.append(
                (psnr(pred, target, self.data_range, self.max_psnr),
                 psnr(pred, target, self.data_range, self.max_psnr,
                      mask=sample['voxel_mask'])))

    def compute_metrics(self, results: List[Tuple[float, float]]) -> dict:
        values = np.asarray(results, dtype=np.float64).reshape(-1, 2)
        masked = values[~np.isnan(values[:, 1]), 1]
        return dict(psnr_all=float(values[:, 0].mean()),
                    psnr_masked=float(masked.mean()) if masked.size else
                    float('nan'))
