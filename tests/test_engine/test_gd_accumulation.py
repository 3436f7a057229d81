"""Gradient accumulation on the tokenizer's generator / discriminator path
(``BaseTokenizer.train_step`` → ``update_params`` with the two wrappers
of ``MultiPartOptimWrapperConstructor``, ``accumulative_counts=2`` in each
part's config, the counters initialised as mmengine's train loop does).

* 2 accumulated iterations of batch 4 update both parts exactly as one
  iteration of batch 8 (two windows; Adam, gradient clipping on the
  generator), to 1e-6. Every term is a batch mean (L1, VQ terms, hinge,
  fixed GAN weight; no LeCam / adaptive weight / BatchNorm), so the two
  runs compute the same function.
* A non-finite loss inside a window drops that optimizer's whole window
  (the policy of ``update_params``): the accumulated run then equals the
  batch-8 run in which the same batch has a non-finite loss and its update
  is skipped — for the generator's loss and for the discriminator's, on the
  first or the second micro-batch of a window — and the next window starts
  clean at its usual boundary.
"""
import math

import pytest
import torch
from mmengine.logging import MessageHub

from _helpers import torch_threads
from vistok.engine.optimizers import MultiPartOptimWrapperConstructor
from vistok.models.tokenizers.autoencoder import AutoencoderTokenizer

ACCUMULATION = 2
MICRO_BATCH = 4
WINDOWS = 3
ATOL = 1e-6
#: Adam's ``eps`` bounds how much it amplifies the rounding of a different
#: summation order: a step is ``lr · g / (|g| + eps)``, so with the default
#: 1e-8 a ~1e-7 gradient turns fp32 rounding into 1e-4 of the weights
ADAM = dict(type='Adam', lr=1e-2, betas=(0.5, 0.9), eps=1e-3)


def tiny_tokenizer():
    torch.manual_seed(0)
    conv = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                resolution=16, z_channels=4, num_groups=4)
    return AutoencoderTokenizer(
        encoder=dict(type='ConvEncoder', in_channels=3, **conv),
        quantizer=dict(type='VectorQuantizer', codebook_size=16,
                       embed_dim=4),
        decoder=dict(type='ConvDecoder', out_ch=3, **conv),
        discriminator=dict(type='PatchGANDiscriminator', in_channels=3,
                           base_channels=8, num_layers=2, norm='group',
                           num_groups=4),
        adversarial_loss=dict(type='AdversarialLoss', loss_type='hinge',
                              adaptive_weight=False, generator_weight=0.5,
                              start_iter=0),
        max_nonfinite_skips=10)


def wrappers(model, accumulation, iterations):
    """The two wrappers from the config keys, counters set as mmengine's
    ``IterBasedTrainLoop.run`` sets them (iteration 0 of ``iterations``)."""
    part = dict(accumulative_counts=accumulation)
    optim = MultiPartOptimWrapperConstructor(dict(
        generator=dict(optimizer=ADAM, clip_grad=dict(max_norm=0.5), **part),
        discriminator=dict(optimizer=ADAM, **part)))(model)
    optim.initialize_count_status(model, 0, iterations)
    return optim


def images(window):
    """The batch of 8 of ``window`` (uint8, fixed)."""
    g = torch.Generator().manual_seed(100 + window)
    return [torch.randint(0, 256, (3, 16, 16), generator=g,
                          dtype=torch.uint8)
            for _ in range(ACCUMULATION * MICRO_BATCH)]


class Poison:
    """Makes the generator's (``'generator'``) or discriminator's
    (``'discriminator'``) loss non-finite on chosen calls, through the
    public methods of the model's loss modules."""

    def __init__(self, model):
        self.bad = set()
        l1 = model.reconstruction_losses[0]
        l1_forward = l1.forward
        disc = model.adversarial_loss.discriminator_losses

        def poisoned_l1(*args):
            out = l1_forward(*args)
            return out * math.nan if 'generator' in self.bad else out

        def poisoned_disc(*args):
            out = disc(*args)
            if 'discriminator' in self.bad:
                out['loss_disc'] = out['loss_disc'] * math.nan
            return out

        l1.forward = poisoned_l1
        model.adversarial_loss.discriminator_losses = poisoned_disc


def weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def train(accumulation, poisoned=None, position=0):
    """``WINDOWS`` windows; ``poisoned = {window: part}`` makes ``part``'s
    loss non-finite on micro-batch ``position`` of that window (on the whole
    batch without accumulation). Returns the model, the weights after each
    window and the last logs."""
    model = tiny_tokenizer().train()
    poison = Poison(model)
    iterations = WINDOWS * accumulation
    optim = wrappers(model, accumulation, iterations)
    size = ACCUMULATION * MICRO_BATCH // accumulation
    after, logs = [], None
    hub = MessageHub.get_current_instance()
    for it in range(iterations):
        window, micro = divmod(it, accumulation)
        hub.update_info('iter', it)
        part = (poisoned or {}).get(window)
        poison.bad = {part} if part and micro == position else set()
        batch = images(window)[micro * size:(micro + 1) * size]
        before = weights(model)
        logs = model.train_step(dict(inputs=batch), optim)
        if micro + 1 < accumulation:  # no step inside a window
            assert all(torch.equal(before[k], v)
                       for k, v in weights(model).items()), it
        else:
            after.append(weights(model))
    return model, after, logs


def assert_same(got, expected, prefix=''):
    for name, value in expected.items():
        if name.startswith(prefix):
            torch.testing.assert_close(got[name], value, rtol=0, atol=ATOL,
                                       msg=name)


def parts_changed(a, b, prefix):
    return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))


def test_two_accumulated_batches_of_4_equal_one_batch_of_8():
    with torch_threads(1):
        _, accumulated, _ = train(ACCUMULATION)
        _, large, _ = train(1)
    start = weights(tiny_tokenizer())
    for window in range(WINDOWS):
        assert_same(accumulated[window], large[window])
    # both parts moved in every window (the equality is not trivial)
    for prefix in ('encoder.', 'decoder.', 'quantizer.', 'discriminator.'):
        assert parts_changed(start, large[0], prefix), prefix
        assert parts_changed(large[0], large[1], prefix), prefix


@pytest.mark.parametrize('position', [0, 1])
def test_nonfinite_loss_drops_its_window_as_the_large_batch_would(position):
    """The generator's loss is non-finite in window 1, the
    discriminator's in window 2 (on micro-batch ``position``): each part
    skips exactly that window — its weights stay those of the window
    before, the other part's move — and the result equals the batch-8 run
    with the same non-finite batches; each non-finite loss counts once."""
    poisoned = {1: 'generator', 2: 'discriminator'}
    with torch_threads(1):
        model, accumulated, logs = train(ACCUMULATION, poisoned, position)
        _, large, large_logs = train(1, poisoned)
    for window in range(WINDOWS):
        assert_same(accumulated[window], large[window])
    generator = ('encoder.', 'decoder.', 'quantizer.')
    for prefix in generator:
        assert not parts_changed(accumulated[0], accumulated[1], prefix)
        assert parts_changed(accumulated[1], accumulated[2], prefix)
    assert parts_changed(accumulated[0], accumulated[1], 'discriminator.')
    assert not parts_changed(accumulated[1], accumulated[2],
                             'discriminator.')
    assert logs['nonfinite_skips'].item() == 2
    assert large_logs['nonfinite_skips'].item() == 2
    assert model.nonfinite_guard.skipped == 2
