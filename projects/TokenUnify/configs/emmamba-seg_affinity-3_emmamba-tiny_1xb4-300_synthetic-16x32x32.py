# Affinity fine-tuning of the tiny EMmamba on the synthetic EM volume, from
# scratch (CPU, a few minutes), then whole-volume evaluation: Gaussian
# sliding windows, watershed + waterz agglomeration (median affinity), VOI
# (bits, as waterz / the paper) and adapted Rand error. The
# `_tokenunify` variant starts from the pre-trained backbone.
_base_ = [
    '../../../configs/_base_/default_runtime.py',
    './_base_/synthetic_em.py',
    './_base_/tiny_emmamba.py',
]
model = dict(
    type='AffinitySegmentor',
    backbone=dict(out_channels=3),
    affinity_loss=dict(type='ClassBalancedMSELoss'),
    postprocessor=dict(type='WatershedAgglomeration', threshold=0.5),
    inference=dict(window=(16, 32, 32), overlap=0.25, batch_size=4),
)
train_dataloader = dict(dataset=dict(pipeline={{_base_.seg_train_pipeline}}))
val_dataloader = dict(dataset=dict(pipeline={{_base_.seg_test_pipeline}}))
test_dataloader = val_dataloader
val_evaluator = [dict(type='VOI'), dict(type='AdaptedRandError')]
test_evaluator = val_evaluator
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.95),
                   weight_decay=0.05),
    clip_grad=dict(max_norm=1.0))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=300, val_interval=300)
default_hooks = dict(logger=dict(interval=25),
                     checkpoint=dict(interval=300, max_keep_ckpts=1))
