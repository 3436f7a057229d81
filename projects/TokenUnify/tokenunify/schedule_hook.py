"""Task-weight schedules of TokenUnify pre-training (Chen et al.,
arXiv 2405.16847): ``L = α(t)·L_random + β(t)·L_next + γ(t)·L_next-all``.

* ``mode='curriculum'`` (ICCV'25 / v2 paper): phases separated by boundaries
  at fractions of training (published: 30 % and 70 %). Phase 1 is random-token
  dominant with the **published** weights 0.73 / 0.18 / 0.09 (random /
  next-token / next-all); phase 2 is next-token dominant and phase 3
  next-all dominant, with the auxiliary weights "about 0.18 and 0.09
  throughout" — which auxiliary task gets which is **INFERRED** (default: the
  dominant role rotates random → next-token → next-all and the task that is
  dominant next gets 0.18). The paper smooths the transitions "via softmax
  temperature decay" without defining it; two smoothings are offered, the
  hard switch staying the default:

  - ``temperature=τ`` (the paper's softmax, our definition, INFERRED): at
    progress ``p = t / T`` the weights are the mixture ``Σ_k π_k(p) w_k`` of
    the phase weights ``w_k`` with ``π(p) = softmax_k(−d_k(p) / τ)``, where
    ``d_k(p)`` is the distance of ``p`` from phase ``k``'s interval
    ``[e_k, e_{k+1})`` (0 inside it). Deep inside a phase its weights hold
    (the others decay as ``exp(−d/τ)``); across a boundary they blend
    smoothly, half / half at the boundary itself; ``τ → 0`` is the hard
    switch. ``τ`` is a fraction of training (0.02: the blend spans about
    ±5 % of training around each boundary).
  - ``transition=w``: a linear ramp over a window ``w`` around each
    boundary.
* ``mode='sequential'`` (the released code and v1 paper): consecutive stages,
  each with its own task(s) — by default the random-token stage, then the
  joint next-token + next-all stage from its checkpoint (800 epochs each,
  hence half of training each).

The weights are a pure function of the iteration (:meth:`weights_at`), so a
resumed run continues on the same schedule.
"""
import math
from typing import Dict, List, Optional, Sequence

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from vistok.registry import HOOKS
from .pretrainer import TASKS

#: published (v2 paper): phase 1, random-token dominant
PUBLISHED_PHASE1_WEIGHTS = dict(random=0.73, next_token=0.18, next_all=0.09)
#: INFERRED: phase 2 (next-token dominant) and phase 3 (next-all dominant)
INFERRED_LATER_PHASE_WEIGHTS = (
    dict(random=0.09, next_token=0.73, next_all=0.18),
    dict(random=0.18, next_token=0.09, next_all=0.73),
)
#: published phase boundaries, fractions of the training iterations
PUBLISHED_BOUNDARIES = (0.3, 0.7)
#: the released code's recipe: random-token, then joint next + next-all
OFFICIAL_STAGES = (
    dict(end=0.5, task='random'),
    dict(end=1.0, weights=dict(next_token=1.0, next_all=1.0)),
)
MODES = ('curriculum', 'sequential')


def _check_weights(weights: Dict[str, float], key: str) -> Dict[str, float]:
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f'{key} must be a non-empty dict task -> weight, got '
                         f'{weights!r}')
    for name, value in weights.items():
        if name not in TASKS:
            raise ValueError(f'{key}: unknown task {name!r}; tasks are '
                             f'{TASKS}')
        if not (isinstance(value, (int, float)) and math.isfinite(value)
                and value >= 0):
            raise ValueError(f'{key}.{name} must be a finite number >= 0, got '
                             f'{value!r}')
    return {name: float(value) for name, value in weights.items()}


def _check_fractions(values: Sequence[float], key: str, last_is_one: bool
                     ) -> List[float]:
    """Strictly increasing fractions in (0, 1) — or in (0, 1] ending at 1
    when ``last_is_one``."""
    values = [float(v) for v in values]
    edges = [0.0] + values + ([] if last_is_one else [1.0])
    if not (all(a < b for a, b in zip(edges, edges[1:])) and
            (not last_is_one or (values and values[-1] == 1.0))):
        end = 'the last = 1' if last_is_one else 'all < 1'
        raise ValueError(f'{key} must be strictly increasing fractions of '
                         f'training > 0, {end}, got {values}')
    return values


@HOOKS.register_module()
class TaskWeightScheduleHook(Hook):
    """Set the pre-training task weights before every training iteration:
    ``model.set_task_weights(weights_at(runner.iter, runner.max_iters))``
    (contract: the unwrapped model has ``set_task_weights(dict)``, e.g.
    :class:`~.pretrainer.TokenUnifyPretrainer`).

    Every returned dict has the same keys (the tasks named anywhere in the
    schedule); a task missing from a phase or stage gets 0.

    Args:
        mode: ``'curriculum'`` or ``'sequential'`` (see the module
            docstring).
        boundaries: curriculum only; phase boundaries as fractions of
            ``max_iters`` (default :data:`PUBLISHED_BOUNDARIES`, 0.3 / 0.7).
            Phase ``k`` starts at iteration ``round(boundaries[k-1] ·
            max_iters)``.
        phase_weights: curriculum only; one dict task → weight per phase
            (``len(boundaries) + 1``). Default: the published phase 1 then the
            INFERRED phases 2 and 3 (:data:`INFERRED_LATER_PHASE_WEIGHTS`).
        transition: curriculum only; 0 switches the weights at the
            boundaries; ``w > 0`` ramps them linearly from one phase's to the
            next over ``[b − w/2, b + w/2) · max_iters`` around each boundary
            ``b`` (ramps may not overlap or leave [0, 1]).
        temperature: curriculum only, instead of ``transition``; ``τ > 0``
            blends the phases with the softmax of their distances divided by
            ``τ`` (a fraction of training; see the module docstring).
        stages: sequential only; consecutive stages ``dict(end=fraction,
            task=name)`` or ``dict(end=fraction, weights=dict(...))``; a stage
            runs until iteration ``round(end · max_iters)``; the last ``end``
            is 1. Default :data:`OFFICIAL_STAGES`.
    """

    priority = 'NORMAL'

    def __init__(self,
                 mode: str = 'curriculum',
                 boundaries: Optional[Sequence[float]] = None,
                 phase_weights: Optional[Sequence[Dict[str, float]]] = None,
                 transition: Optional[float] = None,
                 temperature: Optional[float] = None,
                 stages: Optional[Sequence[dict]] = None):
        if mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
        self.mode = mode
        if mode == 'curriculum':
            if stages is not None:
                raise ValueError("stages is for mode='sequential'")
            self._init_curriculum(
                PUBLISHED_BOUNDARIES if boundaries is None else boundaries,
                phase_weights or ((PUBLISHED_PHASE1_WEIGHTS, ) +
                                  INFERRED_LATER_PHASE_WEIGHTS),
                0.0 if transition is None else float(transition))
            self.temperature = self._check_temperature(temperature,
                                                       transition)
            tables = self.phase_weights
        else:
            if not (boundaries is None and phase_weights is None
                    and transition is None and temperature is None):
                raise ValueError('boundaries, phase_weights, transition and '
                                 "temperature are for mode='curriculum'")
            self._init_stages(OFFICIAL_STAGES if stages is None else stages)
            tables = self.stage_weights
        self.tasks = tuple(t for t in TASKS if any(t in w for w in tables))

    def _init_curriculum(self, boundaries, phase_weights, transition) -> None:
        self.boundaries = _check_fractions(boundaries, 'boundaries', False)
        if len(phase_weights) != len(self.boundaries) + 1:
            raise ValueError(f'phase_weights needs len(boundaries) + 1 = '
                             f'{len(self.boundaries) + 1} phases, got '
                             f'{len(phase_weights)}')
        self.phase_weights = [
            _check_weights(w, f'phase_weights[{i}]')
            for i, w in enumerate(phase_weights)
        ]
        edges = [0.0]
        for b in self.boundaries:
            edges += [b - transition / 2, b + transition / 2]
        edges.append(1.0)
        if transition < 0 or any(a > b for a, b in zip(edges, edges[1:])):
            raise ValueError(f'transition must be >= 0 and its ramps '
                             f'[b - transition/2, b + transition/2] around '
                             f'the boundaries {self.boundaries} must not '
                             f'overlap or leave [0, 1], got {transition}')
        self.transition = transition

    @staticmethod
    def _check_temperature(temperature, transition) -> Optional[float]:
        if temperature is None:
            return None
        if transition:
            raise ValueError('give transition (linear ramp) or temperature '
                             '(softmax blend), not both')
        if isinstance(temperature, bool) or not (
                isinstance(temperature, (int, float))
                and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f'temperature must be a finite number > 0 (a '
                             f'fraction of training), got {temperature!r}')
        return float(temperature)

    def _init_stages(self, stages: Sequence[dict]) -> None:
        if not stages:
            raise ValueError('stages must name at least one stage')
        ends, self.stage_weights = [], []
        for i, stage in enumerate(stages):
            stage = dict(stage)
            key = f'stages[{i}]'
            if set(stage) - {'end', 'task', 'weights'} or 'end' not in stage \
                    or ('task' in stage) == ('weights' in stage):
                raise ValueError(f'{key} must be dict(end=..., task=...) or '
                                 f'dict(end=..., weights=...), got {stage}')
            ends.append(stage['end'])
            weights = (stage['weights'] if 'weights' in stage else
                       {stage['task']: 1.0})
            self.stage_weights.append(_check_weights(weights, key))
        self.stage_ends = _check_fractions(ends, 'stages[*].end', True)

    # --- the schedule ----------------------------------------------------
    def _full(self, weights: Dict[str, float]) -> Dict[str, float]:
        return {t: weights.get(t, 0.0) for t in self.tasks}

    def weights_at(self, iteration: int, max_iters: int) -> Dict[str, float]:
        """Task weights at training iteration ``iteration`` (0-based) of
        ``max_iters`` — a pure function of both."""
        if max_iters < 1:
            raise ValueError(f'max_iters must be >= 1, got {max_iters}')
        if self.mode == 'sequential':
            for end, weights in zip(self.stage_ends, self.stage_weights):
                if iteration < round(end * max_iters):
                    return self._full(weights)
            return self._full(self.stage_weights[-1])
        if self.temperature is not None:
            return self._softmax_blend(iteration / max_iters)
        for i, b in enumerate(self.boundaries):
            before, after = self.phase_weights[i], self.phase_weights[i + 1]
            if self.transition == 0:
                if iteration < round(b * max_iters):
                    return self._full(before)
                continue
            start = (b - self.transition / 2) * max_iters
            width = self.transition * max_iters
            if iteration < start:
                return self._full(before)
            if iteration < start + width:
                s = (iteration - start) / width
                before, after = self._full(before), self._full(after)
                return {t: (1 - s) * before[t] + s * after[t]
                        for t in self.tasks}
        return self._full(self.phase_weights[-1])

    def _softmax_blend(self, progress: float) -> Dict[str, float]:
        """``Σ_k softmax_k(−d_k / τ) · w_k`` (module docstring)."""
        edges = [0.0] + list(self.boundaries) + [1.0]
        scores = [-max(start - progress, 0.0, progress - end) /
                  self.temperature for start, end in zip(edges, edges[1:])]
        top = max(scores)
        mix = [math.exp(score - top) for score in scores]
        total = sum(mix)
        tables = [self._full(w) for w in self.phase_weights]
        return {t: sum(m * w[t] for m, w in zip(mix, tables)) / total
                for t in self.tasks}

    # --- hook points -----------------------------------------------------
    @staticmethod
    def _model(runner):
        model = runner.model
        return model.module if is_model_wrapper(model) else model

    def before_train(self, runner) -> None:
        """Check the model and set the weights of the first (or resumed)
        iteration, so a schedule naming a task the model lacks fails before
        training starts."""
        model = self._model(runner)
        if not callable(getattr(model, 'set_task_weights', None)):
            raise TypeError(f'TaskWeightScheduleHook needs a model with '
                            f'set_task_weights(dict); {type(model).__name__} '
                            f'has none')
        model.set_task_weights(self.weights_at(runner.iter, runner.max_iters))

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch=None) -> None:
        self._model(runner).set_task_weights(
            self.weights_at(runner.iter, runner.max_iters))
