"""UniCode's language-driven iterative training (Zheng et al. 2024, "UniCode:
Learning a Unified Codebook for Multimodal Large Language Models", §3.2):
the visual codebook is mixed into an external (LLM embedding) codebook with
a weight ``λ_t`` that ramps linearly from 0 to 1, then the last iterations
(the "tail") train encoder and decoder against the frozen external codebook,
while the adversarial generator term fades as ``1 - 0.9·λ_t``.

Official code: ``EMAVectorQuantizer.forward`` in
``src/vae/models/stage1/modules/quantizer.py`` sets ``ratio = min(1,
global_step / (2 · epoch_train_steps · (max_epochs - tail_epoch)))`` (the
factor 2 because PyTorch Lightning counts the steps of both optimizers, so
the ramp spans the non-tail epochs) from step counts patched onto the
quantizer by the training script, and ``VQLPIPSWithDiscriminator`` in
``src/vae/models/stage1/discriminator.py`` multiplies its generator term by
``1 - 0.9 · llm_ratio``. Here the schedule is an explicit hook and ``λ`` a
pure function of the iteration (:func:`mix_weight_at`), so a resumed run
continues the ramp where it stopped.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from vistok.models.utils import ModelEMA
from vistok.registry import HOOKS


def mix_weight_at(iteration: int, max_iters: int, tail_iters: int) -> float:
    """``λ_t = min(1, t / (max_iters - tail_iters))`` at training iteration
    ``t`` (0-based: the number of iterations already done)."""
    ramp = max_iters - tail_iters
    if tail_iters < 0 or ramp < 1:
        raise ValueError(
            f'CodebookMixHook needs 0 <= tail_iters < max_iters, got '
            f'tail_iters={tail_iters} and max_iters={max_iters}')
    return min(1.0, iteration / ramp)


def external_codebook_quantizers(
        model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of every submodule of ``model`` with an external
    codebook (``use_external_codebook`` true and a ``set_mix_weight``
    method, e.g. a ``VectorQuantizer`` built with
    ``use_external_codebook=True``), each once (a codebook shared by two
    levels is one module). The EMA copy of a tokenizer
    (:class:`~vistok.models.utils.ModelEMA`) is skipped: it copies the live
    quantizers' buffers (``mix_weight``, the external table) at every EMA
    update."""
    found, seen = [], set()

    def walk(module: nn.Module, prefix: str) -> None:
        if isinstance(module, ModelEMA) or id(module) in seen:
            return
        seen.add(id(module))
        if (getattr(module, 'use_external_codebook', False)
                and callable(getattr(module, 'set_mix_weight', None))):
            found.append((prefix, module))
        for name, child in module.named_children():
            walk(child, f'{prefix}.{name}' if prefix else name)

    walk(model, '')
    return found


@HOOKS.register_module()
class CodebookMixHook(Hook):
    """Set the codebook mixing weight ``λ_t`` of every external-codebook
    quantizer before each training iteration, freeze the codebooks for the
    tail, scale the adversarial generator term, and log it all.

    Before iteration ``t`` (``runner.iter``; also at ``before_train``, so a
    resumed run starts at its own ``t``):

    * ``quantizer.set_mix_weight(λ_t)`` with ``λ_t`` from
      :func:`mix_weight_at` on every quantizer
      :func:`external_codebook_quantizers` finds (at least one, else a
      ``TypeError`` at ``before_train``);
    * once ``t >= max_iters - tail_iters`` (``λ = 1``), with
      ``freeze_tail``, ``quantizer.set_codebook_frozen(True)`` on each
      quantizer that has that method (once per run of this hook; a resumed
      run inside the tail calls it again);
    * with ``adversarial_scale=(a, b)``,
      ``model.adversarial_loss.set_generator_scale(a + b·λ_t)`` (UniCode:
      ``(1.0, -0.9)``, i.e. ``1 - 0.9·λ_t``; see
      :class:`~vistok.models.losses.AdversarialLoss`). The model must have
      an ``adversarial_loss`` with ``set_generator_scale`` (checked at
      ``before_train``); ``None`` leaves the term untouched.

    Logged into the message hub (``LoggerHook`` writes the latest values in
    its log line and to the visualizer backends): ``train/{log_prefix}
    lambda``, ``train/{log_prefix}adversarial_scale`` (when set) and, every
    ``stats_interval`` iterations after the step, each quantizer's
    ``mix_stats()`` (a dict of floats, e.g. ``latent_ratio``, ``diff_cos``;
    when the quantizer has that method) as ``train/{log_prefix}{module
    name}.{stat}``, e.g. ``train/codebook_mix/quantizer.top.diff_cos``.

    Args:
        tail_iters: iterations at the end trained on the frozen external
            codebook (UniCode's ``tail_epoch``); the ramp spans the first
            ``max_iters - tail_iters``.
        tail_epochs: the tail in epochs instead (``tail_epochs ·
            len(runner.train_dataloader)`` iterations; UniCode's release
            "epo45+5": 5). Give ``tail_iters`` or ``tail_epochs``, not both.
        adversarial_scale: ``(a, b)`` for the generator-term scale ``a +
            b·λ_t``, or ``None``.
        freeze_tail: freeze the codebooks for the tail.
        stats_interval: log ``mix_stats()`` every this many iterations.
        log_prefix: put in front of every logged name.
    """

    # before LoggerHook (BELOW_NORMAL): the values enter the same log line
    priority = 'NORMAL'

    def __init__(self,
                 tail_iters: int = 0,
                 tail_epochs: Optional[int] = None,
                 adversarial_scale: Optional[Sequence[float]] = None,
                 freeze_tail: bool = True,
                 stats_interval: int = 1,
                 log_prefix: str = 'codebook_mix/'):
        for name, value in (('tail_iters', tail_iters),
                            ('tail_epochs', tail_epochs)):
            if value is not None and not (isinstance(value, int)
                                          and value >= 0):
                raise ValueError(f'{name} must be an int >= 0, got '
                                 f'{value!r}')
        if tail_iters and tail_epochs is not None:
            raise ValueError(f'give tail_iters or tail_epochs, not both; got '
                             f'tail_iters={tail_iters}, tail_epochs='
                             f'{tail_epochs}')
        if adversarial_scale is not None:
            adversarial_scale = tuple(float(v) for v in adversarial_scale)
            if len(adversarial_scale) != 2 or not all(
                    math.isfinite(v) for v in adversarial_scale):
                raise ValueError(
                    f'adversarial_scale must be (a, b), two finite numbers '
                    f'for the scale a + b·λ, got {adversarial_scale!r}')
        if not isinstance(stats_interval, int) or stats_interval < 1:
            raise ValueError(f'stats_interval must be a positive int, got '
                             f'{stats_interval!r}')
        self.tail_iters = tail_iters
        self.tail_epochs = tail_epochs
        self.adversarial_scale = adversarial_scale
        self.freeze_tail = freeze_tail
        self.stats_interval = stats_interval
        self.log_prefix = log_prefix
        self._frozen = False

    # --- the schedule ----------------------------------------------------
    def resolve_tail_iters(self, runner) -> int:
        """The tail in iterations (``tail_epochs`` converted with the
        length of ``runner.train_dataloader``)."""
        if self.tail_epochs is None:
            return self.tail_iters
        return self.tail_epochs * len(runner.train_dataloader)

    def mix_weight(self, runner) -> float:
        """``λ`` of the iteration the runner is about to run."""
        return mix_weight_at(runner.iter, runner.max_iters,
                             self.resolve_tail_iters(runner))

    def generator_scale(self, mix_weight: float) -> Optional[float]:
        """``a + b·λ`` of ``adversarial_scale`` (``None`` when unset)."""
        if self.adversarial_scale is None:
            return None
        a, b = self.adversarial_scale
        return a + b * mix_weight

    # --- hook points -----------------------------------------------------
    @staticmethod
    def _model(runner) -> nn.Module:
        model = runner.model
        return model.module if is_model_wrapper(model) else model

    def _adversarial_loss(self, model: nn.Module):
        loss = getattr(model, 'adversarial_loss', None)
        if not callable(getattr(loss, 'set_generator_scale', None)):
            raise TypeError(
                f'CodebookMixHook(adversarial_scale={self.adversarial_scale}'
                f') needs a model whose adversarial_loss has '
                f'set_generator_scale (an AdversarialLoss); '
                f'{type(model).__name__}.adversarial_loss is '
                f'{type(loss).__name__}')
        return loss

    def before_train(self, runner) -> None:
        """Check the model, then set the values of the first (or resumed)
        iteration."""
        model = self._model(runner)
        if not external_codebook_quantizers(model):
            raise TypeError(
                f'CodebookMixHook found no quantizer with an external '
                f'codebook in {type(model).__name__} (build one with '
                f'use_external_codebook=True or external_codebook_path)')
        if self.adversarial_scale is not None:
            self._adversarial_loss(model)
        self.mix_weight(runner)  # checks tail against max_iters
        self._frozen = False
        self._apply(runner)

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch=None) -> None:
        self._apply(runner)

    def _apply(self, runner) -> None:
        model = self._model(runner)
        weight = self.mix_weight(runner)
        quantizers = external_codebook_quantizers(model)
        tail_start = runner.max_iters - self.resolve_tail_iters(runner)
        if runner.iter < tail_start:
            # a run resumed with a longer schedule from a checkpoint saved
            # in the tail: its codebook was frozen, the ramp is not over
            for _, quantizer in quantizers:
                if bool(getattr(quantizer, 'codebook_frozen', False)):
                    quantizer.set_codebook_frozen(False)
            self._frozen = False
        for _, quantizer in quantizers:
            quantizer.set_mix_weight(weight)
        if self.freeze_tail and runner.iter >= tail_start and not self._frozen:
            for _, quantizer in quantizers:
                if callable(getattr(quantizer, 'set_codebook_frozen', None)):
                    quantizer.set_codebook_frozen(True)
            self._frozen = True
        hub = runner.message_hub
        hub.update_scalar(f'train/{self.log_prefix}lambda', weight)
        scale = self.generator_scale(weight)
        if scale is not None:
            self._adversarial_loss(model).set_generator_scale(scale)
            hub.update_scalar(f'train/{self.log_prefix}adversarial_scale',
                              scale)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if not self.every_n_train_iters(runner, self.stats_interval):
            return
        for name, stats in self.mix_stats(self._model(runner)).items():
            for key, value in stats.items():
                runner.message_hub.update_scalar(
                    f'train/{self.log_prefix}{name}.{key}', value)

    @staticmethod
    def mix_stats(model: nn.Module) -> Dict[str, Dict[str, float]]:
        """Module name → ``mix_stats()`` (as floats) of each
        external-codebook quantizer of ``model`` that has the method."""
        return {
            name: {k: float(v) for k, v in quantizer.mix_stats().items()}
            for name, quantizer in external_codebook_quantizers(model)
            if callable(getattr(quantizer, 'mix_stats', None))
        }
