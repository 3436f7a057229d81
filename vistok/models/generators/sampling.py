"""Token sampling shared by every generator: classifier-free guidance with a
schedule, temperature, top-k and top-p (nucleus) filtering.

Guidance (Ho & Salimans 2022) is one formula everywhere:
``ℓ = ℓ_u + s_t · (ℓ_c - ℓ_u)`` on the logits, with ``s_t`` from
:func:`guidance_scale`. With guidance disabled (``scale=None``, or 1 under
the constant schedule) a generator must not run the unconditional branch at
all and samples from ``ℓ_c``, so it equals the conditional model exactly.
"""
import math
from typing import Optional

import torch

from vistok.registry import SAMPLERS

GUIDANCE_SCHEDULES = ('constant', 'linear', 'power_cosine')


def guidance_scale(scale: Optional[float], schedule: str, progress: float,
                   power: float = 1.0) -> float:
    """The guidance scale ``s_t`` at ``progress`` ∈ [0, 1] (the fraction of
    the generation done: AR position / length, MaskGIT step / steps, VAR
    scale index / (scales - 1)).

    * ``constant``: ``s``;
    * ``linear`` (VAR, MUSE): ``1 + (s - 1) · progress``, a ramp from no
      guidance to ``s``;
    * ``power_cosine`` (TiTok / MaskGen): ``1 + (s - 1) · (1 - cos(π ·
      progress^power)) / 2``.

    ``scale=None`` means no guidance (returns 1).
    """
    if schedule not in GUIDANCE_SCHEDULES:
        raise ValueError(f'guidance schedule must be one of '
                         f'{GUIDANCE_SCHEDULES}, got {schedule!r}')
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f'progress must be in [0, 1], got {progress}')
    if scale is None:
        return 1.0
    if schedule == 'constant':
        return float(scale)
    if schedule == 'linear':
        return 1.0 + (scale - 1.0) * progress
    return 1.0 + (scale - 1.0) * (1 - math.cos(math.pi * progress**power)) / 2


def filter_logits(logits: torch.Tensor, top_k: Optional[int] = None,
                  top_p: Optional[float] = None) -> torch.Tensor:
    """Set to ``-inf`` all but the ``top_k`` largest logits and all but the
    smallest set of tokens whose probability mass reaches ``top_p``
    (Holtzman et al. 2020); the most likely token is always kept. Works on
    the last axis of ``(..., V)``."""
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f'top_k must be >= 1, got {top_k}')
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[
            ..., -1:]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f'top_p must be in (0, 1], got {top_p}')
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # mass strictly before each token: keep while it is below top_p
        before = probs.cumsum(-1) - probs
        drop_sorted = before >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float('-inf'))
    return logits


def sample_logits(logits: torch.Tensor,
                  temperature: float = 1.0,
                  top_k: Optional[int] = None,
                  top_p: Optional[float] = None,
                  generator: Optional[torch.Generator] = None
                  ) -> torch.Tensor:
    """Draw token ids ``(...)`` from logits ``(..., V)``; ``temperature=0``
    is greedy (argmax). fp32 math; deterministic for a seeded
    ``generator``."""
    logits = logits.float()
    if temperature == 0:
        return filter_logits(logits, top_k, top_p).argmax(-1)
    if temperature < 0:
        raise ValueError(f'temperature must be >= 0, got {temperature}')
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    ids = torch.multinomial(flat, 1, generator=generator)
    return ids.reshape(probs.shape[:-1])


@SAMPLERS.register_module()
class TokenSampler:
    """Sampling settings of a generator, built from its config
    (``sampler=dict(type='TokenSampler', temperature=1.0, top_k=None,
    top_p=None, guidance_scale=None, guidance_schedule='constant',
    guidance_power=1.0)``).

    Args:
        temperature: softmax temperature; 0 is greedy.
        top_k, top_p: see :func:`filter_logits`.
        guidance_scale: classifier-free guidance ``s`` (``None``: off).
        guidance_schedule, guidance_power: see :func:`guidance_scale`.
    """

    def __init__(self,
                 temperature: float = 1.0,
                 top_k: Optional[int] = None,
                 top_p: Optional[float] = None,
                 guidance_scale: Optional[float] = None,
                 guidance_schedule: str = 'constant',
                 guidance_power: float = 1.0):
        if temperature < 0:
            raise ValueError(f'temperature must be >= 0, got {temperature}')
        if guidance_schedule not in GUIDANCE_SCHEDULES:
            raise ValueError(f'guidance_schedule must be one of '
                             f'{GUIDANCE_SCHEDULES}, got '
                             f'{guidance_schedule!r}')
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.guidance = guidance_scale
        self.schedule = guidance_schedule
        self.power = guidance_power

    @property
    def uses_guidance(self) -> bool:
        """Whether the unconditional branch must run at all."""
        return self.guidance is not None and not (
            self.schedule == 'constant' and self.guidance == 1.0)

    def guide(self, cond: torch.Tensor, uncond: Optional[torch.Tensor],
              progress: float) -> torch.Tensor:
        """Guided logits at ``progress``; ``cond`` unchanged without
        guidance."""
        if not self.uses_guidance:
            return cond
        scale = guidance_scale(self.guidance, self.schedule, progress,
                               self.power)
        return uncond + scale * (cond - uncond)

    def sample(self, logits: torch.Tensor,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Token ids from (guided) logits ``(..., V)``."""
        return sample_logits(logits, self.temperature, self.top_k, self.top_p,
                             generator)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(temperature={self.temperature}, '
                f'top_k={self.top_k}, top_p={self.top_p}, guidance_scale='
                f'{self.guidance}, guidance_schedule={self.schedule!r})')
