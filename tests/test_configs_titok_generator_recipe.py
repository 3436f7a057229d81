"""TiTok's generator recipe (``configs/_base_/recipes/titok_generator.py``)
against the official code (bytedance/1d-tokenizer at
942a96fbdd873780179d1b78d5462911528bf8c8): the learning-rate schedule, the
EMA decay, bf16 autocast, the sampler settings of each gFID row, and the
flipped token export (``tools/export_tokens.py --hflip-pairs``)."""
import math
import os.path as osp
import runpy

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from _helpers import REPO_ROOT
from vistok.apis.tokenize import load_tokenizer, tokenize
from vistok.datasets.token_shards import TokenShardDataset
from vistok.registry import DATASETS, HOOKS, MODELS, PARAM_SCHEDULERS

RECIPE = 'configs/_base_/recipes/titok_generator.py'
#: a tiny VQ tokenizer over 32 px images (16 x 16 tokens)
TINY_CONFIG = osp.join(REPO_ROOT, 'tests/data/configs/tiny_vqvae.py')
#: every generator config on TiTok's recipe; the TiTok rows with their
#: configs/infer/TiTok/*.yaml sampling (num_steps, randomize_temperature,
#: guidance_scale, guidance_decay) as vistok's (steps, choice_temperature,
#: guidance_scale, guidance_schedule, guidance_power): 'linear' decay is
#: l_c + s t/T (l_c - l_u) = vistok 1 + s; 'power-cosine' is
#: l_u + s_t (l_c - l_u) = vistok s with generate's guidance_scale_pow 3
TITOK_ROWS = {
    'configs/maskgit/maskgit_vq-4k_bert-titok-l32_32xb64-500k_in1k-256.py':
    (8, 9.5, 1 + 4.5, 'linear', 1.0),
    'configs/maskgit/maskgit_vq-4k_bert-titok-b64_32xb64-500k_in1k-256.py':
    (8, 11.0, 1 + 3.0, 'linear', 1.0),
    'configs/maskgit/maskgit_vq-4k_uvit-titok-s128_32xb64-500k_in1k-256.py':
    (64, 2.8, 6.9, 'power_cosine', 3.0),
}
TOKENS = dict(zip(TITOK_ROWS, (32, 64, 128)))
MARVEL_ROWS = [
    f'projects/MARVEL/configs/maskgit_rlfq-4k-x{d}_bert-titok-l32_32xb64-'
    '500k_in1k-256.py' for d in (1, 2, 4)
]
PEAK_LR, END_LR, WARMUP, TOTAL = 2e-4, 1e-5, 10_000, 500_000


def official_lr(step: int) -> float:
    """``get_cosine_schedule_with_warmup``'s lr (utils/lr_schedulers.py,
    num_cycles 0.5) at update ``step``: accelerate steps the scheduler
    ``num_processes`` times per update and create_lr_scheduler scales both
    step counts by ``num_processes``, which cancels."""
    if step < WARMUP:
        return PEAK_LR * step / WARMUP
    progress = (step - WARMUP) / (TOTAL - WARMUP)
    ratio = max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return END_LR + (PEAK_LR - END_LR) * ratio


@pytest.mark.filterwarnings('ignore:Detected call of `scheduler.step')
def test_schedule_is_titok_warmup_then_cosine_to_1e5():
    """lr(0) = the warm-up start, lr(10k) = 2e-4, lr(500k) = 1e-5, and
    every update's lr within 2e-10 of the official formula, from the
    recipe's param_scheduler built by mmengine on a dummy optimizer."""
    cfg = Config.fromfile(osp.join(REPO_ROOT, RECIPE))
    assert cfg.train_cfg.max_iters == TOTAL
    assert cfg.optim_wrapper.optimizer.lr == PEAK_LR
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))],
                                lr=cfg.optim_wrapper.optimizer.lr)
    with DefaultScope.overwrite_default_scope('vistok'):
        schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=optimizer))
                      for s in cfg.param_scheduler]
    group = optimizer.param_groups[0]
    start = cfg.param_scheduler[0].start_factor * PEAK_LR
    lrs = [group['lr']]
    for _ in range(TOTAL):
        for scheduler in schedulers:
            scheduler.step()
        lrs.append(group['lr'])
    assert lrs[0] == pytest.approx(start, rel=1e-12)
    assert lrs[WARMUP] == pytest.approx(PEAK_LR, rel=1e-12)
    assert lrs[TOTAL] == pytest.approx(END_LR, rel=1e-9)
    # every warm-up update within start_factor * peak of the official
    assert max(abs(lrs[k] - official_lr(k))
               for k in range(WARMUP + 1)) < 2.1e-10
    # the cosine part: the official's to rounding
    assert all(
        abs(lrs[k] - official_lr(k)) < 1e-15 + 1e-9 * official_lr(k)
        for k in range(WARMUP, TOTAL + 1, 97))


@pytest.mark.parametrize('rel_path', [RECIPE, *TITOK_ROWS, *MARVEL_ROWS])
def test_ema_decay_bf16_and_sampler_of_the_recipe(rel_path):
    """EMAHook built with decay 0.999 (EMAModel(decay=0.999)), bf16 autocast
    without a loss scaler (mixed_precision 'bf16'), TiTok's sampler with
    softmax temperature annealing (sample_imagenet_titok.py), and each
    TiTok row's configs/infer sampling."""
    cfg = Config.fromfile(osp.join(REPO_ROOT, rel_path))
    with DefaultScope.overwrite_default_scope('vistok'):
        hooks = [HOOKS.build(h) for h in cfg.custom_hooks]
    (ema, ) = [h for h in hooks if type(h).__name__ == 'EMAHook']
    assert ema.ema_cfg['type'] == 'ExponentialMovingAverage'
    assert 1 - ema.ema_cfg['momentum'] == pytest.approx(0.999, abs=1e-15)
    assert cfg.optim_wrapper.type == 'AutocastOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16'
    assert cfg.optim_wrapper.clip_grad.max_norm == 1.0
    assert cfg.model.sampling_mode == 'titok'
    assert cfg.model.softmax_temperature_annealing is True
    assert cfg.model.mask_schedule == 'arccos'
    if rel_path in TITOK_ROWS:
        steps, temperature, scale, schedule, power = TITOK_ROWS[rel_path]
        sampler = cfg.model.sampler
        assert (cfg.model.steps, cfg.model.choice_temperature,
                sampler.guidance_scale, sampler.guidance_schedule,
                sampler.get('guidance_power', 1.0)) == (
                    steps, temperature, scale, schedule, power)
        assert cfg.model.token_shape == (TOKENS[rel_path], )


def test_autocast_wrapper_of_the_recipe_runs_on_cpu():
    """The recipe's optimizer wrapper builds and steps without CUDA (bf16
    autocast on the CPU), so CPU runs of the recipe keep working."""
    from mmengine.optim import build_optim_wrapper

    import vistok.engine  # noqa: F401  (registers the wrapper)
    cfg = Config.fromfile(osp.join(REPO_ROOT, RECIPE))
    model = torch.nn.Linear(4, 4)
    with DefaultScope.overwrite_default_scope('vistok'):
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    with wrapper.optim_context(model):
        out = model(torch.randn(2, 4))
    if not torch.cuda.is_available():
        assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().square().mean())


def test_hflip_pairs_export_holds_tokens_of_each_image_and_its_flip(
        tmp_path):
    """``--hflip-pairs``: position 2i holds the tokens of image i as the
    pipeline gives it, 2i + 1 those of the same image flipped along its
    width (tokenised directly), labels / sample_idx shared; the flag
    changes the export's identity."""
    tool = runpy.run_path(osp.join(REPO_ROOT, 'tools/export_tokens.py'))
    config = osp.join(REPO_ROOT, TINY_CONFIG)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('vistok'):
        tokenizer = MODELS.build(Config.fromfile(config).model)
    checkpoint = str(tmp_path / 'tokenizer.pth')
    torch.save(dict(state_dict=tokenizer.state_dict(), meta=dict(iter=1)),
               checkpoint)
    num = 5
    options = ['--cfg-options', f'val_dataloader.dataset.num_samples={num}']
    out = tmp_path / 'pairs'
    manifest = tool['main']([config, checkpoint, '--data', 'val', '--out',
                             str(out), '--hflip-pairs', '--batch-size', '3',
                             '--shard-size', '4', *options])
    assert manifest['num_samples'] == 2 * num
    plain = tool['main']([config, checkpoint, '--data', 'val', '--out',
                          str(tmp_path / 'plain'), *options])
    assert plain['dataset_sha256'] != manifest['dataset_sha256']

    cfg = Config.fromfile(config)
    cfg.merge_from_dict({'val_dataloader.dataset.num_samples': num})
    with DefaultScope.overwrite_default_scope('vistok'):
        images = DATASETS.build(cfg.val_dataloader.dataset)
    model = load_tokenizer(cfg, checkpoint)
    pictures = [images[i]['inputs'] for i in range(num)]
    flipped = [p.flip(-1) for p in pictures]
    assert not all(torch.equal(p, f) for p, f in zip(pictures, flipped))
    direct = tokenize(model, pictures + flipped).long()
    stored = TokenShardDataset(str(out), verify=True)
    for i in range(num):
        assert torch.equal(stored[2 * i]['indices'], direct[i])
        assert torch.equal(stored[2 * i + 1]['indices'], direct[num + i])
        assert stored[2 * i]['sample_idx'] == stored[2 * i + 1]['sample_idx']
    # the flipped tokens differ from the plain ones: a flip reached the
    # tokenizer (and the plain export equals the even positions)
    reread = TokenShardDataset(str(tmp_path / 'plain'))
    assert all(torch.equal(reread[i]['indices'], stored[2 * i]['indices'])
               for i in range(num))
    assert not all(torch.equal(stored[2 * i]['indices'],
                               stored[2 * i + 1]['indices'])
                   for i in range(num))
