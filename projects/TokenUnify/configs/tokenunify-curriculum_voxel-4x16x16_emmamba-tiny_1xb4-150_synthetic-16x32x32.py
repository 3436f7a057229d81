# TokenUnify pre-training on the synthetic EM volume (CPU, ~1 minute): the
# three tasks (random-token, next-token, next-all) mixed by the curriculum
# schedule hook (published phase-1 weights 0.73 / 0.18 / 0.09, boundaries at
# 30 % / 70 %; later phases inferred). Validation: PSNR of the random-token
# reconstruction on fixed crops of another volume.
_base_ = [
    '../../../configs/_base_/default_runtime.py',
    './_base_/synthetic_em.py',
    './_base_/tiny_emmamba.py',
]
model = dict(
    type='TokenUnifyPretrainer',
    backbone=dict(out_channels=1),
    tasks=dict(random=dict(mask_ratio=0.4, fill='noise', loss_on='all'),
               next_token=dict(),
               next_all=dict(loss_on='all')),
    prefix=dict(fill='noise'),
    # next-token head: the size-agnostic Perceiver resampler (vistok's
    # default); 'official' is the released Preciever (16x160x160 crops only)
    head='perceiver',
    token_size=(4, 16, 16),
    val_mask_ratio=0.4,
)
train_dataloader = dict(dataset=dict(
    with_labels=False,
    pipeline={{_base_.pretrain_pipeline}}))
val_dataloader = dict(
    batch_size=4,
    dataset=dict(with_labels=False, test_crops='grid',
                 pipeline=[{{_base_.pack}}]))
test_dataloader = val_dataloader
val_evaluator = dict(type='TokenUnifyPSNR')
test_evaluator = val_evaluator
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.95),
                   weight_decay=0.05),
    clip_grad=dict(max_norm=1.0))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=150, val_interval=150)
custom_hooks = [dict(type='TaskWeightScheduleHook', mode='curriculum')]
default_hooks = dict(logger=dict(interval=25),
                     checkpoint=dict(interval=150, max_keep_ckpts=1))
