"""TokenUnify's claim in miniature: fine-tune EMmamba on the synthetic EM
volume from scratch and from a TokenUnify pre-trained backbone, with the same
fine-tuning budget, and print both segmentations' VOI / adapted Rand error
(plus trivial baselines) as JSON.

    python projects/TokenUnify/tools/compare_pretraining.py \\
        [--pretrain-iters 150] [--finetune-iters 300] [--work-dir DIR]

Everything runs on CPU in a few minutes on the embedded synthetic data
(configs in projects/TokenUnify/configs/*synthetic*). One seed per run:
differences of a few hundredths of VOI are within run-to-run noise.
"""
import argparse
import json
import os.path as osp
import sys
import tempfile

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))))
sys.path.insert(0, REPO_ROOT)

CONFIGS = osp.join(REPO_ROOT, 'projects', 'TokenUnify', 'configs')
PRETRAIN_CONFIG = osp.join(
    CONFIGS, 'tokenunify-curriculum_voxel-4x16x16_emmamba-tiny_1xb4-150_'
    'synthetic-16x32x32.py')
FINETUNE_CONFIG = osp.join(
    CONFIGS, 'emmamba-seg_affinity-3_emmamba-tiny_1xb4-300_synthetic-'
    '16x32x32.py')
FROM_PRETRAINED_CONFIG = FINETUNE_CONFIG.replace('.py', '_tokenunify.py')


def run(config, work_dir, iters, options=None, seed=0):
    """Train ``config`` for ``iters`` iterations (validation at the end);
    returns ``(runner, final validation metrics)``."""
    from mmengine.config import Config

    from vistok.apis import apply_cli_options, build_runner
    cfg = Config.fromfile(config)
    options = dict(options or {})
    options.update({'train_cfg.max_iters': iters,
                    'train_cfg.val_interval': iters,
                    'default_hooks.checkpoint.interval': iters})
    apply_cli_options(cfg, work_dir=work_dir, seed=seed,
                      cfg_options=options)
    cfg.log_level = 'WARNING'  # keep stdout for the JSON result
    runner = build_runner(cfg)
    runner.train()
    metrics = runner.val_loop.run()
    return runner, {k: float(v) for k, v in metrics.items()
                    if isinstance(v, (int, float))}


def trivial_baselines(runner):
    """VOI / ARAND of trivial segmentations of the test volume: one segment
    for everything, and every z-slice's connected foreground in 2-D (no
    boundary detection at all beyond the labelled background)."""
    import numpy as np
    from skimage.metrics import adapted_rand_error, variation_of_information
    gt = np.asarray(runner.val_dataloader.dataset[0]['data_samples']
                    .gt_label).astype(np.int64)
    candidates = {
        'one_segment': np.ones_like(gt),
        'one_segment_per_slice': np.broadcast_to(
            np.arange(1, gt.shape[0] + 1)[:, None, None], gt.shape).copy(),
    }
    results = {}
    for name, seg in candidates.items():
        split, merge = variation_of_information(gt, seg, ignore_labels=[0])
        results[name] = dict(voi=float(split + merge),
                             arand=float(adapted_rand_error(
                                 gt, seg, ignore_labels=[0])[0]))
    return results


def compare(work_dir, pretrain_iters, finetune_iters):
    """Pre-train, fine-tune from it and from scratch; the result dict."""
    _, pretrain = run(PRETRAIN_CONFIG, osp.join(work_dir, 'pretrain'),
                      pretrain_iters)
    checkpoint = osp.join(work_dir, 'pretrain', f'iter_{pretrain_iters}.pth')
    scratch_runner, scratch = run(FINETUNE_CONFIG,
                                  osp.join(work_dir, 'scratch'),
                                  finetune_iters)
    _, tokenunify = run(FROM_PRETRAINED_CONFIG,
                        osp.join(work_dir, 'tokenunify'), finetune_iters,
                        {'model.pretrained.checkpoint': checkpoint})
    return dict(pretrain_iters=pretrain_iters, finetune_iters=finetune_iters,
                pretrain=pretrain, scratch=scratch, tokenunify=tokenunify,
                trivial=trivial_baselines(scratch_runner))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--pretrain-iters', type=int, default=150)
    parser.add_argument('--finetune-iters', type=int, default=300)
    parser.add_argument('--work-dir', default=None)
    args = parser.parse_args()
    work_dir = args.work_dir or tempfile.mkdtemp(prefix='tokenunify-')
    result = compare(work_dir, args.pretrain_iters, args.finetune_iters)
    print(json.dumps(result, indent=1))


if __name__ == '__main__':
    main()
