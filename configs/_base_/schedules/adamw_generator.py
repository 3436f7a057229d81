# AdamW (0.9, 0.95), weight decay 0.05, gradient clipping 1.0, linear
# warm-up then constant; iteration-based. Recipes set lr and max_iters.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.95),
                   weight_decay=0.05),
    clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0,
         end=5000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=300000)
