"""SeiT++'s claim in miniature: classify images from their stored tokens
with a token ViT fine-tuned from masked token modelling (MTM) and trained
from scratch, with the same fine-tuning budget, and print both top-1
accuracies (and the majority-class share) as JSON.

    python projects/SeiTpp/tools/compare_pretraining.py \\
        [--tokenizer-iters 300] [--pretrain-iters 300] \\
        [--finetune-iters 300] [--train-images 2048] [--val-images 256] \\
        [--work-dir DIR]

Everything runs on CPU on the embedded procedural shapes (6 classes):
1. train the tiny tokenizer (configs/tiny/vqvae_*.py: 256 codes, 16 x 16
   tokens of 64 px images);
2. store the train / val images as SeiT token files with
   tools/export_tokens.py --format seit (codes, labels, codebook.ckpt);
3. MTM pre-training on the train tokens (configs/tiny/seitpp-mtm_*.py);
4. fine-tune the token classifier from it and from scratch
   (configs/tiny/seitpp_*.py) and evaluate on the val tokens.
One seed per run: differences of a few points are within run-to-run
noise at this size.
"""
import argparse
import json
import os.path as osp
import runpy
import sys
import tempfile

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))))
sys.path.insert(0, REPO_ROOT)

CONFIGS = osp.join(REPO_ROOT, 'projects', 'SeiTpp', 'configs', 'tiny')
TOKENIZER_CONFIG = osp.join(CONFIGS, 'vqvae_vq-256_conv-f4_1xb8-300_'
                            'shapes-64.py')
PRETRAIN_CONFIG = osp.join(CONFIGS, 'seitpp-mtm_vq-256_vit-tiny_1xb32-300_'
                           'shapes-tok16.py')
FINETUNE_CONFIG = osp.join(CONFIGS, 'seitpp_vq-256_vit-tiny_1xb32-300_'
                           'shapes-tok16.py')
EXPORT_TOOL = osp.join(REPO_ROOT, 'tools', 'export_tokens.py')


def run(config, work_dir, iters, options=None, seed=0):
    """Train ``config`` for ``iters`` iterations (validation at the end);
    returns ``(checkpoint, final validation metrics)``."""
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
    return (osp.join(work_dir, f'iter_{iters}.pth'),
            {k: float(v) for k, v in metrics.items()
             if isinstance(v, (int, float))})


def token_options(token_root):
    """``--cfg-options`` pointing the tiny SeiT++ configs at the exported
    token files."""
    # the tokenizer's code vectors, written by the export of each split
    options = {'model.data_preprocessor.codebook_file':
               osp.join(token_root, 'train', 'codebook.ckpt')}
    for split in ('train', 'val'):
        for key, name in (('token_file', 'token.data.bin.gz'),
                          ('label_file', 'label.txt')):
            options[f'{split}_dataloader.dataset.{key}'] = osp.join(
                token_root, split, f'{split}-{name}')
    return options


def export(tokenizer_checkpoint, token_root, train_images, val_images):
    """SeiT token files of the train and val images; returns the
    majority-class share of the val labels (percent)."""
    import numpy as np

    tool = runpy.run_path(EXPORT_TOOL)
    sizes = dict(train=train_images, val=val_images)
    for split, size in sizes.items():
        tool['main']([
            TOKENIZER_CONFIG, tokenizer_checkpoint, '--data', split, '--out',
            osp.join(token_root, split), '--format', 'seit',
            '--shard-size', '512', '--cfg-options',
            f'{split}_dataloader.dataset.num_samples={size}'])
    labels = np.loadtxt(osp.join(token_root, 'val', 'val-label.txt'),
                        dtype=np.int64, ndmin=1)
    return float(np.bincount(labels).max() / len(labels) * 100)


def compare(work_dir, tokenizer_iters=300, pretrain_iters=300,
            finetune_iters=300, train_images=2048, val_images=256):
    """Tokenizer → stored tokens → MTM → fine-tune from it and from
    scratch; the result dict."""
    tokenizer, _ = run(TOKENIZER_CONFIG, osp.join(work_dir, 'tokenizer'),
                       tokenizer_iters)
    token_root = osp.join(work_dir, 'tokens')
    majority = export(tokenizer, token_root, train_images, val_images)
    options = token_options(token_root)
    pretrained, pretrain = run(PRETRAIN_CONFIG, osp.join(work_dir, 'mtm'),
                               pretrain_iters, options)
    _, scratch = run(FINETUNE_CONFIG, osp.join(work_dir, 'scratch'),
                     finetune_iters, options)
    _, from_mtm = run(FINETUNE_CONFIG, osp.join(work_dir, 'from_mtm'),
                      finetune_iters, {**options,
                                       'model.pretrained': pretrained})
    return dict(tokenizer_iters=tokenizer_iters,
                pretrain_iters=pretrain_iters, finetune_iters=finetune_iters,
                train_images=train_images, val_images=val_images,
                majority_class_top1=majority, pretrain=pretrain,
                scratch=scratch, from_mtm=from_mtm)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--tokenizer-iters', type=int, default=300)
    parser.add_argument('--pretrain-iters', type=int, default=300)
    parser.add_argument('--finetune-iters', type=int, default=300)
    parser.add_argument('--train-images', type=int, default=2048)
    parser.add_argument('--val-images', type=int, default=256)
    parser.add_argument('--work-dir', default=None)
    args = parser.parse_args()
    work_dir = args.work_dir or tempfile.mkdtemp(prefix='seitpp-')
    result = compare(work_dir, args.tokenizer_iters, args.pretrain_iters,
                     args.finetune_iters, args.train_images, args.val_images)
    print(json.dumps(result, indent=1))


if __name__ == '__main__':
    main()
