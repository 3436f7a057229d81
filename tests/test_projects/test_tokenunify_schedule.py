"""TaskWeightScheduleHook: curriculum and sequential task weights as a pure
function of the iteration, driving the model before every training iteration
(projects/TokenUnify/tokenunify/schedule_hook.py)."""
import math
from types import SimpleNamespace

import pytest
import torch
from mmengine.hooks import Hook
from torch.utils.data import DataLoader

from projects.TokenUnify.tokenunify.schedule_hook import (
    INFERRED_LATER_PHASE_WEIGHTS,
    PUBLISHED_PHASE1_WEIGHTS,
    TaskWeightScheduleHook,
)
from vistok.engine.runner import VistokRunner
from vistok.registry import HOOKS

PHASE1 = dict(random=0.73, next_token=0.18, next_all=0.09)
PHASE2, PHASE3 = INFERRED_LATER_PHASE_WEIGHTS
RANDOM_ONLY = dict(random=1.0, next_token=0.0, next_all=0.0)
JOINT_NEXT = dict(random=0.0, next_token=1.0, next_all=1.0)


def test_published_numbers_are_the_phase1_defaults():
    assert PUBLISHED_PHASE1_WEIGHTS == PHASE1
    hook = TaskWeightScheduleHook()
    assert hook.boundaries == [0.3, 0.7]
    assert hook.phase_weights == [PHASE1, PHASE2, PHASE3]
    # inferred later phases keep the auxiliary weights 0.18 / 0.09
    for weights in (PHASE2, PHASE3):
        assert sorted(weights.values()) == [0.09, 0.18, 0.73]


@pytest.mark.parametrize('iteration,expected', [
    (0, PHASE1), (299, PHASE1), (300, PHASE2), (699, PHASE2), (700, PHASE3),
    (999, PHASE3), (1500, PHASE3)])
def test_curriculum_weights_at_given_iterations(iteration, expected):
    hook = HOOKS.build(dict(type='TaskWeightScheduleHook'))
    assert hook.weights_at(iteration, 1000) == expected


def test_boundaries_round_to_whole_iterations():
    hook = TaskWeightScheduleHook()
    # 0.3 * 10 = 3.0000000000000004 in floating point: phase 2 starts at 3
    assert hook.weights_at(2, 10) == PHASE1
    assert hook.weights_at(3, 10) == PHASE2
    assert hook.weights_at(7, 10) == PHASE3


def test_linear_transition_ramps_across_the_boundary():
    a, b = dict(random=1.0, next_all=0.0), dict(random=0.2, next_all=0.6)
    hook = TaskWeightScheduleHook(boundaries=[0.5], phase_weights=[a, b],
                                  transition=0.2)
    assert hook.tasks == ('random', 'next_all')
    assert hook.weights_at(39, 100) == a
    assert hook.weights_at(40, 100) == a
    assert hook.weights_at(50, 100) == pytest.approx(dict(random=0.6,
                                                          next_all=0.3))
    assert hook.weights_at(55, 100) == pytest.approx(dict(random=0.4,
                                                          next_all=0.45))
    assert hook.weights_at(60, 100) == b
    assert hook.weights_at(99, 100) == b


@pytest.mark.parametrize('iteration', [0, 30, 45, 50, 52, 70, 99])
def test_softmax_transition_is_a_logistic_blend_of_two_phases(iteration):
    """Two phases: softmax(-d / tau) over the phases is the logistic
    ``a + sigmoid((p - b) / tau) (b_w - a)`` around the boundary ``b``."""
    a, b = dict(random=1.0, next_all=0.0), dict(random=0.2, next_all=0.6)
    tau = 0.05
    hook = TaskWeightScheduleHook(boundaries=[0.5], phase_weights=[a, b],
                                  temperature=tau)
    s = 1 / (1 + math.exp(-(iteration / 100 - 0.5) / tau))
    assert hook.weights_at(iteration, 100) == pytest.approx(
        {t: a[t] + s * (b[t] - a[t]) for t in a}, abs=1e-12)


def test_softmax_transition_tends_to_the_hard_switch():
    smooth = TaskWeightScheduleHook(temperature=1e-4)
    hard = TaskWeightScheduleHook()
    for iteration in list(range(0, 295)) + list(range(305, 695)) + \
            list(range(705, 1000)):
        assert smooth.weights_at(iteration, 1000) == pytest.approx(
            hard.weights_at(iteration, 1000), abs=1e-12)
    # three phases, wide temperature: every weight between the phases'
    mixed = TaskWeightScheduleHook(temperature=0.2).weights_at(500, 1000)
    for task, weight in mixed.items():
        values = [w[task] for w in (PHASE1, PHASE2, PHASE3)]
        assert min(values) < weight < max(values)
    assert mixed['next_token'] > mixed['random']  # phase 2 dominates


def test_sequential_official_stages_pick_the_right_task():
    hook = TaskWeightScheduleHook(mode='sequential')
    assert hook.weights_at(0, 100) == RANDOM_ONLY
    assert hook.weights_at(49, 100) == RANDOM_ONLY
    assert hook.weights_at(50, 100) == JOINT_NEXT
    assert hook.weights_at(99, 100) == JOINT_NEXT
    hook = TaskWeightScheduleHook(mode='sequential', stages=[
        dict(end=0.25, task='next_token'), dict(end=0.5, task='random'),
        dict(end=1.0, task='next_all')])
    picked = [max(w, key=w.get) for w in
              (hook.weights_at(i, 8) for i in range(8))]
    assert picked == ['next_token'] * 2 + ['random'] * 2 + ['next_all'] * 4
    assert sum(hook.weights_at(5, 8).values()) == 1.0


@pytest.mark.parametrize('kwargs,match', [
    (dict(mode='linear'), 'mode'),
    (dict(boundaries=[0.7, 0.3]), 'boundaries'),
    (dict(boundaries=[0.3, 1.0]), 'boundaries'),
    (dict(boundaries=[0.5]), 'len\\(boundaries\\) \\+ 1 = 2'),
    (dict(boundaries=[0.5], phase_weights=[dict(mim=1.0), dict(random=1.0)]),
     'unknown task'),
    (dict(boundaries=[0.5], phase_weights=[dict(random=-1), PHASE1]),
     'phase_weights\\[0\\].random'),
    (dict(transition=0.5), 'overlap'),
    (dict(transition=0.1, temperature=0.05), 'not both'),
    (dict(temperature=0.0), 'temperature must be'),
    (dict(mode='sequential', temperature=0.05), 'curriculum'),
    (dict(stages=[dict(end=1.0, task='random')]), 'sequential'),
    (dict(mode='sequential', boundaries=[0.5]), 'curriculum'),
    (dict(mode='sequential', stages=[dict(end=0.5, task='random')]),
     'last = 1'),
    (dict(mode='sequential', stages=[dict(end=1.0)]), 'stages\\[0\\]'),
])
def test_invalid_schedules_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TaskWeightScheduleHook(**kwargs)


class FakeModel:

    def __init__(self):
        self.calls = []

    def set_task_weights(self, weights):
        self.calls.append(dict(weights))


def test_hook_sets_weights_before_each_iteration_and_resumes():
    hook = TaskWeightScheduleHook()
    runner = SimpleNamespace(model=FakeModel(), iter=0, max_iters=10)
    hook.before_train(runner)
    for runner.iter in range(10):
        hook.before_train_iter(runner, runner.iter)
    calls = runner.model.calls
    assert calls[0] == PHASE1  # set before iteration 0
    assert calls[1:] == [hook.weights_at(i, 10) for i in range(10)]
    # a resumed run at iteration 7 starts on the same weights
    resumed = SimpleNamespace(model=FakeModel(), iter=7, max_iters=10)
    TaskWeightScheduleHook().before_train(resumed)
    assert resumed.model.calls == [calls[8]] == [PHASE3]
    with pytest.raises(TypeError, match='set_task_weights'):
        hook.before_train(SimpleNamespace(model=torch.nn.Linear(1, 1),
                                          iter=0, max_iters=1))


class RecordWeights(Hook):
    priority = 'LOWEST'

    def __init__(self):
        self.weights = []

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.weights.append({k: float(v) for k, v in outputs.items()
                             if k.startswith('weight_')})


def test_runner_drives_the_pretrainer_through_the_hook(tmp_path):
    crops = torch.rand(4, 1, 16, 32, 32)
    loader = DataLoader([dict(inputs=x) for x in crops], batch_size=2)
    runner = VistokRunner(
        model=dict(type='TokenUnifyPretrainer',
                   backbone=torch.nn.Conv3d(1, 1, 3, padding=1),
                   tasks=dict(random=dict(mask_ratio=0.5), next_token=dict(),
                              next_all=dict()),
                   data_preprocessor=dict(type='BaseDataPreprocessor')),
        work_dir=str(tmp_path),
        train_dataloader=loader,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=False, max_iters=4),
        default_hooks=dict(checkpoint=None),
        custom_hooks=[dict(type='TaskWeightScheduleHook', mode='sequential',
                           stages=[dict(end=0.5, task='random'),
                                   dict(end=1.0, task='next_token')])],
        default_scope='vistok',
        log_level='WARNING')
    recorder = RecordWeights()
    runner.register_hook(recorder)
    runner.train()
    expected = [dict(random=1.0, next_token=0.0, next_all=0.0)] * 2 + \
        [dict(random=0.0, next_token=1.0, next_all=0.0)] * 2
    assert recorder.weights == [{f'weight_{k}': v for k, v in w.items()}
                                for w in expected]
