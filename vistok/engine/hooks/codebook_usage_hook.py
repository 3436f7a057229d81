"""Codebook usage over a window of training iterations, per quantizer level."""
from typing import Dict

import torch
from mmengine.dist import all_gather_object, all_reduce_dict, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from vistok.models.quantizers.base import usage_stats
from vistok.registry import HOOKS

#: the statistics logged per level (besides ``dead_codes``)
REPORTED = ('usage', 'perplexity', 'entropy')


def window_usage(code_counts: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Usage statistics of per-level code histograms.

    Args:
        code_counts: level prefix (``''``, ``'depth0.'``, ...) → histogram
            ``(K,)`` of that level's codes over a window of iterations.

    Returns:
        ``{prefix}usage``, ``{prefix}perplexity``, ``{prefix}entropy``
        (natural log; all from
        :func:`~vistok.models.quantizers.base.usage_stats`) and
        ``{prefix}dead_codes``, the number of codes never used in the window.
    """
    logs = {}
    for prefix, counts in code_counts.items():
        stats = usage_stats(counts, prefix=prefix)
        logs.update({prefix + k: stats[prefix + k].item() for k in REPORTED})
        logs[prefix + 'dead_codes'] = float((counts == 0).sum().item())
    return logs


@HOOKS.register_module()
class CodebookUsageHook(Hook):
    """Log codebook usage per quantizer level over the last ``interval``
    training iterations.

    Every ``interval`` iterations the hook takes the code histograms the
    model accumulated since the previous call (contract: the unwrapped
    model has ``pop_code_counts() -> Dict[str, Tensor]``, level prefix →
    histogram ``(K,)``, resetting its counters; a level missing on some
    rank counts as unused there), sums them over the ranks
    (``mmengine.dist.all_reduce_dict``) and writes, per level (see
    :func:`window_usage`), ``usage``, ``perplexity``, ``entropy`` and
    ``dead_codes`` into the message hub as
    ``train/{log_prefix}{level prefix}{name}``, e.g.
    ``train/codebook/depth0.usage``. ``LoggerHook`` puts the latest value of
    these scalars in its log line and sends them to the visualizer's
    backends (TensorBoard, ...) at its own interval, so make ``interval`` a
    multiple of the logger's. The ``log_prefix`` keeps the window numbers
    apart from the per-batch ``usage`` / ``perplexity`` the model logs
    with its losses. The counters are reset at ``before_train``, so the
    first window starts with training (or with the resumed iteration).

    Args:
        interval: window length and logging period, in training iterations.
        log_prefix: put in front of every logged name.
    """

    # above LoggerHook (BELOW_NORMAL): the values enter the same log line
    priority = 'NORMAL'

    def __init__(self, interval: int = 50, log_prefix: str = 'codebook/'):
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(
                f'interval must be a positive int, got {interval!r}')
        self.interval = interval
        self.log_prefix = log_prefix

    @staticmethod
    def _model(runner):
        model = runner.model
        return model.module if is_model_wrapper(model) else model

    def before_train(self, runner) -> None:
        model = self._model(runner)
        if not callable(getattr(model, 'pop_code_counts', None)):
            raise TypeError(
                f'CodebookUsageHook needs a model with pop_code_counts() '
                f'(per-level code histograms since the last call); '
                f'{type(model).__name__} has none')
        model.pop_code_counts()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if not self.every_n_train_iters(runner, self.interval):
            return
        counts = {
            prefix: histogram.detach().long().clone()
            for prefix, histogram in self._model(
                runner).pop_code_counts().items()
        }
        if get_world_size() > 1:
            # a level may be missing on one rank (e.g. residual dropout
            # skipped a depth for the whole window): count it as unused there
            for sizes in all_gather_object(
                    {prefix: len(h) for prefix, h in counts.items()}):
                for prefix, size in sizes.items():
                    counts.setdefault(prefix, torch.zeros(size,
                                                          dtype=torch.long))
        if counts:
            all_reduce_dict(counts, op='sum')
        for name, value in window_usage(counts).items():
            runner.message_hub.update_scalar(
                f'train/{self.log_prefix}{name}', value)
