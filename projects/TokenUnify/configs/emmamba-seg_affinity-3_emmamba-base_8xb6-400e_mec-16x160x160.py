# EMmamba-base affinity fine-tuning on the MEC wafers, from scratch (Table 1
# row "EMmamba", waterz: Wafer4 VOI 1.7839 / ARAND 0.2052, Wafer36-2 VOI
# 0.6595 / ARAND 0.1231). Nearest-neighbour affinities with in-plane boundary
# widening, class-balanced weighted MSE, AdamW (0.9, 0.95) wd 0.05, lr 1e-4 x
# 48 / 256, cosine to 1e-6, 400 epochs of 10k crops (83,334 iterations).
# Test: whole wafers, Gaussian sliding windows (16x160x160, overlap 0.25),
# watershed fragments + waterz (median affinity, threshold 0.5), VOI in bits
# (as waterz) and adapted Rand error.
_base_ = [
    '../../../configs/_base_/default_runtime.py',
    './_base_/mec.py',
]
custom_imports = dict(imports=['projects.TokenUnify.tokenunify'],
                      allow_failed_imports=False)
num_gpus, batch_per_gpu = 8, 6
max_iters = 400 * 10000 // (num_gpus * batch_per_gpu) + 1
model = dict(
    type='AffinitySegmentor',
    backbone=dict(type='EMMamba', arch='base', out_channels=3,
                  kernel_size=(1, 5, 5)),
    affinity_loss=dict(type='ClassBalancedMSELoss'),
    postprocessor=dict(type='WatershedAgglomeration', threshold=0.5),
    inference=dict(window=(16, 160, 160), overlap=0.25, batch_size=4),
)
train_dataloader = {{_base_.seg_train_dataloader}}
val_dataloader = {{_base_.seg_test_dataloader}}
test_dataloader = val_dataloader
val_evaluator = [dict(type='VOI'), dict(type='AdaptedRandError')]
test_evaluator = val_evaluator
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4 * num_gpus * batch_per_gpu / 256,
                   betas=(0.9, 0.95), weight_decay=0.05),
    clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=max_iters, eta_min=1e-6,
         by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=10000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(checkpoint=dict(interval=10000))
