"""UniCode's language-driven training in miniature (CPU, the embedded
photos, a tiny random Llama as the LLM): the run whose codebook ends as the
LLM table (λ = 1, frozen tail) reconstructs about as well as the same
recipe with λ held at 0, and far better than the mean image."""
import os.path as osp
import runpy

import torch
from mmengine.config import Config

from _helpers import REPO_ROOT
from vistok.apis import apply_cli_options, build_runner
from vistok.evaluation.metrics.psnr import psnr

CONFIG = osp.join(REPO_ROOT, 'projects/UniCode/configs/tiny/unicode-hqvae_'
                  'hq-llm256-d64_conv-f4_1xb8-200_skimage-64.py')
TOOL = osp.join(REPO_ROOT, 'projects/UniCode/tools/make_tiny_llm.py')
ITERS, TAIL = 80, 20


def train(work_dir, llm, mix):
    cfg = Config.fromfile(CONFIG)
    options = {
        'model.quantizer.top_quantizer.external_codebook_path': llm,
        'train_cfg.max_iters': ITERS, 'train_cfg.val_interval': ITERS,
        'default_hooks.checkpoint.interval': ITERS,
        'model.adversarial_loss.start_iter': ITERS,
        'train_dataloader.batch_size': 4,
        'custom_hooks': [dict(type='CodebookMixHook', tail_iters=TAIL,
                              adversarial_scale=(1.0, -0.9))] if mix else []}
    apply_cli_options(cfg, work_dir=str(work_dir), seed=0,
                      cfg_options=options)
    cfg.log_level = 'WARNING'
    runner = build_runner(cfg)
    runner.train()
    return runner, runner.val_loop.run()


def test_llm_codebook_run_reconstructs_like_the_free_codebook(tmp_path):
    llm = runpy.run_path(TOOL)['make_tiny_llm'](str(tmp_path / 'llm'))
    runner, mixed = train(tmp_path / 'mixed', llm, mix=True)
    quantizer = runner.model.quantizer.top
    stats = quantizer.mix_stats()
    assert stats['mix_weight'] == 1.0 and stats['codebook_frozen'] == 1.0
    # the codebook in use is the (scaled) LLM table
    assert stats['diff_cos'] < 1e-6
    _, free = train(tmp_path / 'free', llm, mix=False)
    # the mean image of the validation photos as every reconstruction
    images = torch.stack([sample['inputs'] for sample in
                          runner.val_dataloader.dataset]).float()
    mean_image = images.mean(0)
    baseline = sum(psnr(mean_image, image, data_range=255.0)
                   for image in images) / len(images)
    print(f'PSNR: LLM codebook (λ -> 1) {mixed["psnr"]:.2f} dB, λ = 0 '
          f'{free["psnr"]:.2f} dB, mean image {baseline:.2f} dB')
    assert mixed['psnr'] >= free['psnr'] - 2.0
    assert mixed['psnr'] > baseline + 0.5
