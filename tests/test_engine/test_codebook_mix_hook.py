"""CodebookMixHook: UniCode's language-driven iterative training schedule
(λ_t = min(1, t / (max_iters - tail_iters)), the frozen tail, the
adversarial generator term times 1 - 0.9·λ), resume and logging."""
import glob
import json
import os.path as osp
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import MessageHub

from _helpers import REPO_ROOT
from vistok.apis import apply_cli_options, build_runner
from vistok.engine.hooks.codebook_mix_hook import (
    CodebookMixHook,
    external_codebook_quantizers,
    mix_weight_at,
)
from vistok.models.losses import AdversarialLoss
from vistok.models.tokenizers.autoencoder import AutoencoderTokenizer
from vistok.models.utils import ModelEMA
from vistok.registry import HOOKS

TINY = osp.join(REPO_ROOT, 'tests/data/configs/tiny_vqvae.py')
MAX_ITERS, TAIL = 10, 2
#: hand-written λ_t = min(1, t / 8) for t = 0 .. 9
LAMBDAS = [0, 1 / 8, 2 / 8, 3 / 8, 4 / 8, 5 / 8, 6 / 8, 7 / 8, 1, 1]


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: the machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class StandInQuantizer(nn.Module):
    """Records what the hook calls (the contract of VectorQuantizer with
    ``use_external_codebook=True``)."""

    use_external_codebook = True

    def __init__(self, frozen_method=True):
        super().__init__()
        self.weights, self.frozen_at = [], []
        if not frozen_method:
            self.set_codebook_frozen = None

    def set_mix_weight(self, weight):
        self.weights.append(weight)

    def set_codebook_frozen(self, frozen):
        self.frozen_at.append((len(self.weights), frozen))
        self.codebook_frozen = frozen

    def mix_stats(self):
        weight = self.weights[-1]
        return dict(latent_ratio=torch.tensor(0.5 + weight),
                    diff_cos=1.0 - weight)


class PlainQuantizer(nn.Module):
    use_external_codebook = False

    def set_mix_weight(self, weight):
        raise AssertionError('not an external-codebook quantizer')


class StandInModel(nn.Module):
    """Two external-codebook levels (one without set_codebook_frozen), a
    plain quantizer, an EMA copy and an adversarial loss."""

    def __init__(self):
        super().__init__()
        self.quantizer = nn.ModuleDict(dict(
            top=StandInQuantizer(), bottom=StandInQuantizer(False),
            plain=PlainQuantizer()))
        self.adversarial_loss = AdversarialLoss()
        self.ema = ModelEMA(dict(quantizer=self.quantizer))


def make_runner(model, iteration=0, max_iters=MAX_ITERS, name='mix_hook',
                dataloader_length=4):
    return SimpleNamespace(model=model, iter=iteration, max_iters=max_iters,
                           train_dataloader=[None] * dataloader_length,
                           message_hub=MessageHub(name))


def run(hook, runner, until):
    """before_train, then the iterations runner.iter .. until - 1."""
    hook.before_train(runner)
    for runner.iter in range(runner.iter, until):
        hook.before_train_iter(runner, runner.iter)
        hook.after_train_iter(runner, runner.iter)


def test_mix_weight_follows_the_formula():
    assert [mix_weight_at(t, MAX_ITERS, TAIL)
            for t in range(MAX_ITERS)] == pytest.approx(LAMBDAS, abs=0)
    assert mix_weight_at(3, 7, 0) == 3 / 7
    for bad in (-1, MAX_ITERS):
        with pytest.raises(ValueError, match='tail_iters'):
            mix_weight_at(0, MAX_ITERS, bad)


def test_hook_sets_lambda_freezes_the_tail_and_scales_the_gan_term():
    model = StandInModel()
    hook = HOOKS.build(dict(type='CodebookMixHook', tail_iters=TAIL,
                            adversarial_scale=(1.0, -0.9)))
    runner = make_runner(model)
    scales = []
    hook.before_train(runner)
    for runner.iter in range(MAX_ITERS):
        hook.before_train_iter(runner, runner.iter)
        scales.append(model.adversarial_loss.generator_scale)
        hook.after_train_iter(runner, runner.iter)
    top, bottom = model.quantizer['top'], model.quantizer['bottom']
    # before_train sets iteration 0's value, then one call per iteration
    assert top.weights == bottom.weights == [0] + LAMBDAS
    # frozen once, when t reaches max_iters - tail_iters = 8 (λ = 1); the
    # level without set_codebook_frozen is skipped
    assert top.frozen_at == [(len([0] + LAMBDAS[:9]), True)]
    assert bottom.frozen_at == []
    assert scales == pytest.approx([1 - 0.9 * lam for lam in LAMBDAS],
                                   abs=1e-12)
    # the EMA copy is left alone (it copies the live buffers)
    assert model.ema['quantizer']['top'].weights == []
    scalars = runner.message_hub.log_scalars
    assert scalars['train/codebook_mix/lambda'].data[0].tolist() == \
        pytest.approx([0] + LAMBDAS)
    assert scalars['train/codebook_mix/adversarial_scale'].current() == \
        pytest.approx(0.1)
    assert scalars['train/codebook_mix/quantizer.top.diff_cos'].data[
        0].tolist() == pytest.approx([1 - lam for lam in LAMBDAS])
    assert scalars['train/codebook_mix/quantizer.bottom.latent_ratio'] \
        .current() == pytest.approx(1.5)


@pytest.mark.parametrize('resume_at', [5, 9])
def test_resume_continues_the_ramp(resume_at):
    """A fresh model and hook resumed at iteration t set the same λ (and
    scale) as the uninterrupted run, and a resume inside the tail freezes
    the codebooks again."""
    full = StandInModel()
    run(CodebookMixHook(tail_iters=TAIL, adversarial_scale=(1.0, -0.9)),
        make_runner(full), MAX_ITERS)
    resumed = StandInModel()
    runner = make_runner(resumed, resume_at, name=f'resumed_{resume_at}')
    run(CodebookMixHook(tail_iters=TAIL, adversarial_scale=(1.0, -0.9)),
        runner, MAX_ITERS)
    weights = resumed.quantizer['top'].weights
    assert weights[0] == LAMBDAS[resume_at]  # set at before_train
    assert weights[1:] == full.quantizer['top'].weights[1 + resume_at:]
    assert resumed.adversarial_loss.generator_scale == \
        full.adversarial_loss.generator_scale == pytest.approx(0.1)
    # recorded: the number of set_mix_weight calls at the time of freezing
    # (before_train's, then one per iteration up to iteration 8)
    calls = 1 + max(0, MAX_ITERS - TAIL - resume_at + 1)
    assert resumed.quantizer['top'].frozen_at == [(calls, True)]


def test_tail_in_epochs_and_without_tail():
    model = StandInModel()
    runner = make_runner(model, max_iters=12, dataloader_length=3)
    run(CodebookMixHook(tail_epochs=1, freeze_tail=False), runner, 12)
    # ramp over 12 - 3 = 9 iterations; nothing frozen
    assert model.quantizer['top'].weights[1:] == [
        min(1, t / 9) for t in range(12)]
    assert model.quantizer['top'].frozen_at == []
    model = StandInModel()
    run(CodebookMixHook(), make_runner(model, name='no_tail'), MAX_ITERS)
    assert model.quantizer['top'].weights[1:] == [t / 10 for t in range(10)]
    assert model.quantizer['top'].frozen_at == []
    assert model.adversarial_loss.generator_scale == 1.0  # untouched


def test_finds_external_codebooks_once_and_skips_the_ema_copy():
    model = StandInModel()
    model.shared = model.quantizer['top']  # one codebook, two names
    names = [name for name, _ in external_codebook_quantizers(model)]
    assert names == ['quantizer.top', 'quantizer.bottom']


def test_clear_errors():
    with pytest.raises(TypeError, match='no quantizer with an external'):
        CodebookMixHook().before_train(make_runner(nn.Linear(1, 1)))
    model = StandInModel()
    model.adversarial_loss = None
    with pytest.raises(TypeError, match='adversarial_loss'):
        CodebookMixHook(adversarial_scale=(1, -0.9)).before_train(
            make_runner(model))
    with pytest.raises(ValueError, match='tail_iters'):
        CodebookMixHook(tail_iters=MAX_ITERS).before_train(
            make_runner(StandInModel()))
    with pytest.raises(ValueError, match='not both'):
        CodebookMixHook(tail_iters=2, tail_epochs=1)
    with pytest.raises(ValueError, match='adversarial_scale'):
        CodebookMixHook(adversarial_scale=(1.0, ))
    with pytest.raises(ValueError, match='stats_interval'):
        CodebookMixHook(stats_interval=0)
    with pytest.raises(ValueError, match='generator scale'):
        AdversarialLoss().set_generator_scale(-0.1)


# ------------------------------------------- through a real tokenizer
class TinyDisc(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(8, 1, 4, 2, 1))

    def forward(self, x):
        return self.net(x)


def test_adversarial_generator_term_scales_by_one_minus_0_9_lambda():
    """Through the tokenizer's loss: at λ_t the hook makes ``loss_gan``
    (adaptive weight on) exactly (1 - 0.9·λ_t) times its value at scale 1
    on the same forward; every other term is unchanged."""
    torch.manual_seed(0)
    conv = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                resolution=16, z_channels=4, num_groups=4)
    model = AutoencoderTokenizer(
        encoder=dict(type='ConvEncoder', in_channels=3, **conv),
        quantizer=dict(type='VectorQuantizer', codebook_size=16,
                       embed_dim=4, use_external_codebook=True),
        decoder=dict(type='ConvDecoder', out_ch=3, **conv),
        discriminator=TinyDisc(),
        adversarial_loss=dict(type='AdversarialLoss', generator_weight=0.75,
                              adaptive_weight_max=500)).eval()
    model.quantizer.load_external_codebook(torch.randn(16, 4))
    runner = make_runner(model, iteration=6, name='tokenizer_mix')
    hook = CodebookMixHook(tail_iters=TAIL, adversarial_scale=(1.0, -0.9))
    hook.before_train(runner)
    lam = 6 / 8
    assert float(model.quantizer.mix_weight) == pytest.approx(lam)
    assert model.adversarial_loss.generator_scale == pytest.approx(
        1 - 0.9 * lam)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    scaled = model.loss(images, iteration=6)
    model.adversarial_loss.set_generator_scale(1.0)
    plain = model.loss(images, iteration=6)
    assert plain['loss_gan'].abs() > 0
    torch.testing.assert_close(scaled['loss_gan'],
                               (1 - 0.9 * lam) * plain['loss_gan'],
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(scaled['gan_weight'],
                               (1 - 0.9 * lam) * plain['gan_weight'],
                               rtol=1e-6, atol=0)
    for name in plain.keys() - {'loss_gan', 'gan_weight'}:
        assert torch.equal(scaled[name], plain[name]), name


# ------------------------------------------------- in a real Runner
class RecordMixWeight(Hook):
    """The live quantizer's λ as used by each iteration's step."""

    priority = 'LOWEST'

    def __init__(self):
        self.weights = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.weights[runner.iter] = float(runner.model.quantizer.mix_weight)


def test_runner_sets_lambda_each_step_and_logs_it(tmp_path):
    """In a Runner the external codebook is loaded (``init_weights``)
    before the hook sets λ > 0; the λ each step used follows min(1, t / 4)
    and LoggerHook wrote it into the training log. (Resume: the hook is a
    pure function of ``runner.iter``, which the Runner restores before
    ``before_train``; see test_resume_continues_the_ramp.)"""
    codebook_path = tmp_path / 'codebook.pth'
    torch.save(torch.randn(64, 8), codebook_path)
    cfg = Config.fromfile(TINY)
    apply_cli_options(cfg, work_dir=str(tmp_path), cfg_options={
        'train_cfg.max_iters': 6, 'train_cfg.val_begin': 1000,
        'default_hooks.checkpoint.interval': 1000,
        'default_hooks.checkpoint.save_last': False,
        'model.quantizer.external_codebook_path': str(codebook_path),
        'custom_hooks': [dict(type='CodebookMixHook', tail_iters=2)]})
    runner = build_runner(cfg)
    recorder = RecordMixWeight()
    runner.register_hook(recorder)
    runner.train()
    expected = [min(1, t / 4) for t in range(6)]
    assert recorder.weights == dict(enumerate(expected))
    path, = glob.glob(osp.join(runner.work_dir, '*', 'vis_data',
                               'scalars.json'))
    with open(path) as f:
        logged = [json.loads(line) for line in f]
    assert [line['codebook_mix/lambda'] for line in logged
            if 'codebook_mix/lambda' in line] == pytest.approx(expected)


def test_resuming_a_frozen_checkpoint_with_a_longer_schedule_unfreezes():
    """A checkpoint saved in the tail of a shorter run (codebook frozen),
    resumed where the longer schedule still ramps: the hook unfreezes
    before setting λ < 1, and freezes again when its own tail starts."""
    model = StandInModel()
    top = model.quantizer['top']
    top.set_codebook_frozen(True)
    hook = HOOKS.build(dict(type='CodebookMixHook', tail_iters=TAIL))
    run(hook, make_runner(model, iteration=5), MAX_ITERS)
    # unfrozen before the first λ (iteration 5) is set; frozen again at
    # t = 8 after 1 + 3 + 1 weights (before_train, t = 5..7, t = 8)
    assert top.frozen_at[1:] == [(0, False), (5, True)]
    assert top.weights[:2] == [LAMBDAS[5], LAMBDAS[5]]
