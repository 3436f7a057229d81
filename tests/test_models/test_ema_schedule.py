"""ModelEMA against a written-out update (issue 17, item 3): decay 0.9 (0.5
cannot tell decay from 1 - decay), with interval and start_iter."""
import pytest
import torch
import torch.nn as nn

from vistok.models.utils import ModelEMA


def test_decay_interval_and_start_iter_follow_the_written_update():
    decay, interval, start_iter = 0.9, 2, 3
    part = nn.Linear(1, 1, bias=False)
    ema = ModelEMA(dict(part=part), decay=decay, interval=interval,
                   start_iter=start_iter)
    expected, seen = None, 0
    for iteration in range(9):
        with torch.no_grad():
            part.weight.fill_(float(iteration + 1) ** 2)
        live = float(part.weight.detach())
        ema.update_parameters(dict(part=part), iteration)
        # written out: before start_iter the copy follows the model; from
        # start_iter on, only every interval-th iteration averages
        if iteration < start_iter or seen == 0:
            expected = live
            seen += 1
        elif iteration % interval == 0:
            expected = decay * expected + (1 - decay) * live
            seen += 1
        # fp32 lerp vs the float64 formula: equal up to rounding
        assert float(ema['part'].weight) == pytest.approx(
            expected, rel=1e-6), iteration
    assert int(ema.num_updates) == seen
    # the last averaged value weighs the history with 0.9, the new with 0.1
    assert abs(expected - 81.0) > 10
