# SeiT++ MTM in miniature on CPU: the tokens of the embedded procedural
# shapes (16 x 16 grids of the tiny tokenizer, stored in the SeiT format by
# tools/compare_pretraining.py under `token_root`), the centre / random
# 14 x 14 crops, a 2-block 64-d encoder and 1-block 32-d decoder over 7 x 7
# patches of 2 x 2 tokens. Mask ratio, drop rule, loss and optimiser
# betas / weight decay as the paper-size config; no TokenAdapt (train one
# with TokenAdaptTrainer to add it).
_base_ = ['../../../../configs/_base_/default_runtime.py']
custom_imports = dict(imports=['projects.SeiTpp.seitpp'],
                      allow_failed_imports=False)
token_root = 'work_dirs/seitpp_tiny_tokens'
codebook_file = f'{token_root}/codebook.ckpt'
num_codes, code_dim, grid, crop = 256, 32, (16, 16), 14
model = dict(
    type='MaskedTokenModel', num_codes=num_codes, code_dim=code_dim,
    img_size=crop, patch_size=2, embed_dim=64, depth=2, num_heads=2,
    decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
    mask_ratio=dict(min=0.4, max=1.0, mean=0.45, std=0.25),
    data_preprocessor=dict(
        type='TokenEmbeddingPreprocessor', codebook_file=codebook_file,
        output='codes', crop_size=crop, rrc_scale=(0.2, 1.0),
        noise_prob=0.0, color_adapt_prob=0.0, mixup=None, token_adapt=None,
        token_adapt_mixup=None, num_classes=6))
train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    sampler=dict(type='ResumableInfiniteSampler', shuffle=True),
    dataset=dict(type='SeiTTokenDataset',
                 token_file=f'{token_root}/train-token.data.bin.gz',
                 label_file=f'{token_root}/train-label.txt', grid=grid))
val_dataloader = dict(
    batch_size=64,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='SeiTTokenDataset',
                 token_file=f'{token_root}/val-token.data.bin.gz',
                 label_file=f'{token_root}/val-label.txt', grid=grid))
test_dataloader = val_dataloader
val_evaluator = dict(type='MaskedTokenAccuracy')
test_evaluator = val_evaluator
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.95),
                   weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=30),
    dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=False, begin=30,
         end=300),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=300, val_interval=300)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(logger=dict(interval=50),
                     checkpoint=dict(interval=300, max_keep_ckpts=1))
log_processor = dict(window_size=10)
