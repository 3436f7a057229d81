"""G/D training of AutoencoderTokenizer: GAN terms, adaptive weight, the
alternating step, EMA and the non-finite policy."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import MessageHub
from mmengine.optim import OptimWrapper

from vistok.engine.optimizers import MultiPartOptimWrapperConstructor
from vistok.models.losses import (
    AdversarialLoss,
    adaptive_gan_weight,
    discriminator_gan_loss,
    generator_gan_loss,
    r1_penalty,
)
from vistok.models.tokenizers.autoencoder import AutoencoderTokenizer
from vistok.models.utils import NonFiniteLossError


class TinyDisc(nn.Module):
    """A two-conv patch discriminator: ``(B, 3, H, W) -> (B, 1, H/4, W/4)``."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(8, 1, 4, 2, 1))

    def forward(self, x):
        return self.net(x)


def tiny_tokenizer(discriminator=True, **kwargs):
    torch.manual_seed(0)
    conv = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                resolution=16, z_channels=4, num_groups=4)
    adversarial = dict(type='AdversarialLoss', start_iter=2)
    adversarial.update(kwargs.pop('adversarial', {}))
    return AutoencoderTokenizer(
        encoder=dict(type='ConvEncoder', in_channels=3, **conv),
        quantizer=dict(type='VectorQuantizer', codebook_size=16, embed_dim=4),
        decoder=dict(type='ConvDecoder', out_ch=3, **conv),
        discriminator=TinyDisc() if discriminator else None,
        adversarial_loss=adversarial if discriminator else None,
        **kwargs)


def optim_wrappers(model, lr=1e-3):
    cfg = dict(generator=dict(optimizer=dict(type='Adam', lr=lr)))
    if model.discriminator is not None:
        cfg['discriminator'] = dict(optimizer=dict(type='Adam', lr=lr))
    return MultiPartOptimWrapperConstructor(cfg)(model)


def batch(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    return dict(inputs=[torch.randint(0, 256, (3, 16, 16), generator=g,
                                      dtype=torch.uint8) for _ in range(n)])


def set_iter(i):
    MessageHub.get_current_instance().update_info('iter', i)


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before,
                                                    module.parameters()))


@pytest.mark.parametrize('loss_type', ['hinge', 'non_saturating', 'vanilla'])
def test_gan_losses_match_their_formulas(loss_type):
    real, fake = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3)
    sig = torch.sigmoid
    expected_d = {
        'hinge': 0.5 * ((1 - real).clamp_min(0).mean() +
                        (1 + fake).clamp_min(0).mean()),
        'non_saturating': -0.5 * (torch.log(sig(real)).mean() +
                                  torch.log(1 - sig(fake)).mean()),
    }
    expected_d['vanilla'] = expected_d['non_saturating']
    expected_g = {
        'hinge': -fake.mean(),
        'non_saturating': -torch.log(sig(fake)).mean(),
        'vanilla': torch.log(1 - sig(fake)).mean(),
    }
    assert torch.allclose(discriminator_gan_loss(loss_type, real, fake),
                          expected_d[loss_type], atol=1e-6)
    assert torch.allclose(generator_gan_loss(loss_type, fake),
                          expected_g[loss_type], atol=1e-6)
    with pytest.raises(ValueError, match='loss_type'):
        generator_gan_loss('wgan', fake)


def test_adaptive_weight_is_the_grad_norm_ratio():
    torch.manual_seed(0)
    layer = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(2, 2, 5, 5)
    out = layer(x)
    nll = (out - 1).abs().mean()
    gan = -(out * torch.linspace(0, 2, 5)).mean()
    weight = adaptive_gan_weight(nll, gan, layer.weight)
    g_nll, = torch.autograd.grad(nll, layer.weight, retain_graph=True)
    g_gan, = torch.autograd.grad(gan, layer.weight, retain_graph=True)
    expected = g_nll.norm() / (g_gan.norm() + 1e-4)
    assert torch.allclose(weight, expected)
    assert not weight.requires_grad
    # the clamp
    assert adaptive_gan_weight(nll * 1e9, gan, layer.weight).item() == 1e4


def test_generator_adversarial_term_uses_the_decoders_last_layer():
    model = tiny_tokenizer(adversarial=dict(generator_weight=0.5))
    inputs = model.data_preprocessor(batch(), True)['inputs']
    losses = model.loss(inputs, iteration=5)
    out = model.reconstruct(inputs)  # same weights, deterministic model
    nll = (out.reconstruction - inputs).abs().mean()
    gan = -model.discriminator(out.reconstruction).mean()
    last = model.decoder.conv_out.weight
    g_nll, = torch.autograd.grad(nll, last, retain_graph=True)
    g_gan, = torch.autograd.grad(gan, last, retain_graph=True)
    weight = 0.5 * g_nll.norm() / (g_gan.norm() + 1e-4)
    assert torch.allclose(losses['gan_weight'], weight, rtol=1e-5)
    assert torch.allclose(losses['loss_gan'], weight * gan, rtol=1e-5)
    # before the start iteration there is no adversarial term at all
    assert 'loss_gan' not in model.loss(inputs, iteration=1)


def test_fixed_gan_weight():
    model = tiny_tokenizer(
        adversarial=dict(adaptive_weight=False, generator_weight=0.1))
    inputs = model.data_preprocessor(batch(), True)['inputs']
    losses = model.loss(inputs, iteration=2)
    out = model.reconstruct(inputs)
    gan = -model.discriminator(out.reconstruction).mean()
    assert torch.allclose(losses['loss_gan'], 0.1 * gan, rtol=1e-5)
    assert losses['gan_weight'].item() == pytest.approx(0.1)


def test_lecam_and_r1_match_their_formulas():
    torch.manual_seed(0)
    disc = TinyDisc()
    loss = AdversarialLoss(lecam_weight=0.5, lecam_decay=0.9, r1_weight=2.0)
    loss.lecam_ema_real.fill_(0.3)
    loss.lecam_ema_fake.fill_(-0.2)
    real, fake = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    terms = loss.discriminator_losses(disc, real, fake)
    lr, lf = disc(real).mean(), disc(fake).mean()
    lecam = (F.relu(lr + 0.2)**2 + F.relu(0.3 - lf)**2) * 0.5
    assert torch.allclose(terms['loss_lecam'], lecam, atol=1e-6)
    assert torch.allclose(loss.lecam_ema_real, 0.9 * 0.3 + 0.1 * lr.detach())
    assert torch.allclose(loss.lecam_ema_fake, 0.9 * -0.2 + 0.1 * lf.detach())
    # R1: (gamma / 2) E ||grad_x D(x)||^2 with gamma = 2
    x = real.clone().requires_grad_(True)
    grad, = torch.autograd.grad(disc(x).sum(), x)
    assert torch.allclose(terms['loss_r1'],
                          grad.pow(2).flatten(1).sum(1).mean(), rtol=1e-5)
    penalty, _ = r1_penalty(disc, real)
    assert penalty.requires_grad  # the penalty trains the discriminator


def test_each_optimizer_changes_only_its_part_and_d_waits_for_its_start():
    model = tiny_tokenizer()
    wrappers = optim_wrappers(model)
    gen = nn.ModuleDict(model.generator_parts())
    g0, d0 = snapshot(gen), snapshot(model.discriminator)
    set_iter(0)  # before start_iter=2: generator only
    logs = model.train_step(batch(0), wrappers)
    assert changed(g0, gen) and not changed(d0, model.discriminator)
    assert 'loss_disc' not in logs and 'loss_gan' not in logs
    assert all(p.grad is None for p in model.discriminator.parameters())

    set_iter(2)  # both steps; the G step must not touch D and vice versa
    g1, d1 = snapshot(gen), snapshot(model.discriminator)
    d_step = wrappers['discriminator'].step
    g_step = wrappers['generator'].step
    seen = {}

    def spy(name, step, module, other):
        def wrapped(*args, **kwargs):
            seen[name] = (snapshot(module), snapshot(other))
            return step(*args, **kwargs)
        return wrapped

    wrappers['generator'].step = spy('g', g_step, gen, model.discriminator)
    wrappers['discriminator'].step = spy('d', d_step, model.discriminator,
                                         gen)
    logs = model.train_step(batch(1), wrappers)
    # at the G step D is still untouched; at the D step G has its new values
    assert all(torch.equal(a, b) for a, b in zip(seen['g'][1], d1))
    assert all(torch.equal(a, b) for a, b in zip(seen['d'][1],
                                                  gen.parameters()))
    assert changed(g1, gen) and changed(d1, model.discriminator)
    for key in ('loss_gan', 'gan_weight', 'loss_disc', 'disc_loss_total',
                'logits_real', 'logits_fake', 'loss_l1', 'loss'):
        assert key in logs, key


def test_missing_optimizer_for_discriminator_is_a_clear_error():
    model = tiny_tokenizer()
    wrapper = OptimWrapper(torch.optim.Adam(model.parameters()))
    with pytest.raises(ValueError, match='MultiPartOptimWrapperConstructor'):
        model.train_step(batch(), wrapper)
    with pytest.raises(KeyError, match='unknown'):
        MultiPartOptimWrapperConstructor(dict(
            generator=dict(optimizer=dict(type='Adam')),
            discriminator=dict(optimizer=dict(type='Adam')),
            critic=dict(optimizer=dict(type='Adam'))))(model)


def test_nonfinite_loss_is_skipped_counted_then_aborts():
    model = tiny_tokenizer(discriminator=False, max_nonfinite_skips=2)
    wrappers = optim_wrappers(model)
    set_iter(0)
    bad = batch()
    poisoned = model.reconstruction_losses[0]
    original = poisoned.forward
    poisoned.forward = lambda pred, target: original(pred, target) * math.nan
    before = snapshot(model)
    for skips in (1, 2):
        logs = model.train_step(bad, wrappers)
        assert logs['nonfinite_skips'].item() == skips
        assert not changed(before, model)  # nothing was updated
    with pytest.raises(NonFiniteLossError, match='loss_l1'):
        model.train_step(bad, wrappers)
    poisoned.forward = original
    model.nonfinite_guard.skipped = 0
    model.train_step(bad, wrappers)
    assert changed(before, model)


def test_ema_copy_tracks_the_model_and_serves_prediction():
    model = tiny_tokenizer(discriminator=False,
                           ema=dict(decay=0.5, use_for_val=True))
    wrappers = optim_wrappers(model)
    assert sum(p.numel() for p in model.ema.parameters()
               if p.requires_grad) == 0
    set_iter(0)
    model.train_step(batch(0), wrappers)  # first update copies
    for name, p in model.encoder.named_parameters():
        assert torch.equal(p, model.ema['encoder'].get_parameter(name))
    prev = {k: v.clone() for k, v in model.ema.state_dict().items()}
    set_iter(1)
    model.train_step(batch(1), wrappers)
    for name, p in model.decoder.named_parameters():
        ema = model.ema['decoder'].get_parameter(name)
        assert torch.allclose(ema, 0.5 * prev[f'decoder.{name}'] + 0.5 * p)
    assert any(k.startswith('ema.decoder.') for k in model.state_dict())

    inputs = model.data_preprocessor(batch(2), True)['inputs']
    model.eval()
    pred = model.predict(inputs)[0].pred_img
    with model.ema.swapped_into(model):
        expected = model.to_pixels(model.reconstruct(inputs).reconstruction)
    assert torch.equal(pred, expected[0])
    live = model.to_pixels(model.reconstruct(inputs).reconstruction)
    assert not torch.equal(pred, live[0])
    assert model.encoder is not model.ema['encoder']  # swapped back


def test_missing_lpips_file_fails_before_iteration_0(tmp_path):
    from mmengine.config import Config
    from mmengine.hooks import Hook

    from _helpers import REPO_ROOT
    from vistok.apis import apply_cli_options, build_runner
    from vistok.utils.weights import MissingWeightsError

    class CountIters(Hook):
        iters = 0

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            CountIters.iters += 1

    cfg = Config.fromfile(
        f'{REPO_ROOT}/configs/vqgan/vqgan_vq-512_conv-f4_1xb8-2k_skimage-64_'
        'lpips.py')
    missing = str(tmp_path / 'no_vgg16.pth')
    apply_cli_options(cfg, work_dir=str(tmp_path), cfg_options={
        'model.perceptual_loss.trunk_path': missing})
    runner = build_runner(cfg)
    runner.register_hook(CountIters())
    with pytest.raises(MissingWeightsError) as err:
        runner.train()
    assert missing in str(err.value)
    assert 'model.perceptual_loss.trunk_path' in str(err.value)
    assert 'vgg16' in str(err.value)  # how to get it
    assert CountIters.iters == 0
