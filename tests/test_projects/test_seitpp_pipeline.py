"""SeiT++ through the Runner on stored tokens: MTM pre-training, then the
token classifier fine-tuned from it with TokenAdapt in its data
preprocessor; the checkpoints hold neither TokenAdapt nor the codebook."""
import os.path as osp

import numpy as np
import torch
from mmengine.config import Config

from _helpers import REPO_ROOT
from projects.SeiTpp.seitpp import TokenAdapt
from vistok.apis import apply_cli_options, build_runner
from vistok.datasets.seit_format import write_seit, write_seit_codebook

CONFIGS = osp.join(REPO_ROOT, 'projects/SeiTpp/configs/tiny')
MTM = osp.join(CONFIGS, 'seitpp-mtm_vq-256_vit-tiny_1xb32-300_shapes-tok16.py')
FINETUNE = osp.join(CONFIGS,
                    'seitpp_vq-256_vit-tiny_1xb32-300_shapes-tok16.py')
SMALL_ADAPT = dict(type='TokenAdapt', num_codes=256, code_dim=32,
                   embed_dim=32, num_heads=2, grid=16, out_grid=14)


def write_tokens(root):
    """SeiT files of 16 x 16 token grids of 6 classes (a class is a
    band of codes), a random 256 x 32 codebook, a random TokenAdapt."""
    rng = np.random.default_rng(0)
    for split, n in (('train', 64), ('val', 24)):
        labels = np.arange(n) % 6
        tokens = rng.integers(0, 40, size=(n, 16, 16)) + 40 * labels[:, None,
                                                                     None]
        write_seit(f'{root}/{split}-token.data.bin.gz', tokens,
                   labels=labels, label_file=f'{root}/{split}-label.txt')
    write_seit_codebook(f'{root}/codebook.ckpt',
                        torch.randn(256, 32, generator=torch.Generator()
                                    .manual_seed(0)))
    torch.manual_seed(0)
    torch.save(TokenAdapt(**{k: v for k, v in SMALL_ADAPT.items()
                             if k != 'type'}).state_dict(),
               f'{root}/tokenadapt.pth')


def options(root, iters, **extra):
    out = {'model.data_preprocessor.codebook_file': f'{root}/codebook.ckpt',
           'train_cfg.max_iters': iters, 'train_cfg.val_interval': iters,
           'default_hooks.checkpoint.interval': iters,
           'train_dataloader.batch_size': 8}
    for split in ('train', 'val'):
        out[f'{split}_dataloader.dataset.token_file'] = (
            f'{root}/{split}-token.data.bin.gz')
        out[f'{split}_dataloader.dataset.label_file'] = (
            f'{root}/{split}-label.txt')
    out.update(extra)
    return out


def train(config, work_dir, cfg_options):
    cfg = Config.fromfile(config)
    apply_cli_options(cfg, work_dir=str(work_dir), seed=0,
                      cfg_options=cfg_options)
    cfg.log_level = 'WARNING'
    runner = build_runner(cfg)
    runner.train()
    return runner, runner.val_loop.run()


def test_mtm_then_finetune_with_token_adapt_through_the_runner(tmp_path):
    root = str(tmp_path / 'tokens')
    write_tokens(root)
    _, pretrain = train(MTM, tmp_path / 'mtm', options(root, 2))
    assert 0 <= pretrain['mtm/accuracy'] <= 100
    mtm_checkpoint = str(tmp_path / 'mtm' / 'iter_2.pth')

    runner, metrics = train(FINETUNE, tmp_path / 'ft', options(
        root, 2, **{'model.pretrained': mtm_checkpoint,
                    'model.data_preprocessor.token_adapt': dict(
                        _delete_=True, **SMALL_ADAPT),
                    'model.data_preprocessor.token_adapt_checkpoint':
                    f'{root}/tokenadapt.pth',
                    'model.data_preprocessor.token_adapt_mixup': dict(
                        _delete_=True, cutmix_alpha=1.0, mixup_alpha=0.8,
                        label_smoothing=0.1)}))
    assert 0 <= metrics['accuracy/top1'] <= 100
    preprocessor = runner.model.data_preprocessor
    assert preprocessor.token_adapt is not None
    saved = torch.load(tmp_path / 'ft' / 'iter_2.pth', map_location='cpu',
                       weights_only=False)['state_dict']
    assert saved and not [k for k in saved if 'token_adapt' in k
                          or 'codebook' in k or k.startswith('f.')
                          or k.startswith('g.')]
    # fine-tuning started from the MTM encoder: a block the classifier
    # shares with it moved away from the MTM values only by 2 steps
    mtm = torch.load(mtm_checkpoint, map_location='cpu',
                     weights_only=False)['state_dict']
    shared = [k for k in saved if k.startswith('blocks.') and k in mtm]
    assert shared
    key = shared[0]
    assert (saved[key] - mtm[key]).abs().max() < 0.01
