# EMmamba-base affinity fine-tuning on the MEC wafers, from scratch (Table 1
# row "EMmamba", waterz: Wafer4 VOI 1.7839 / ARAND 0.2052, Wafer36-2 VOI
# 0.6595 / ARAND 0.1231). Nearest-neighbour affinities with in-plane boundary
# widening, class-balanced weighted MSE (one positive fraction pooled over the
# three channels), AdamW (0.9, 0.95) wd 0.05 (none on 1-D parameters), no
# gradient clipping, lr 1e-4 x 48 / 256, cosine to 1e-6, 400 epochs of 10k
# crops (83,200 iterations): the official launcher `src/run_mamba_seg.sh`
# (`main_finetune.py --batch_size=6 --epochs=400 --warmup_epochs=0
# --blr=1e-4` on 8 GPUs). The other MEC launcher, `src/run_MEC_seg.sh`, is
# `..._8xb20-800e_mec-16x160x160.py`.
# Test: whole wafers, Gaussian sliding windows (16x160x160, overlap 0.25),
# watershed fragments + waterz (median affinity, threshold 0.5), VOI in bits
# (as waterz) and adapted Rand error.
_base_ = [
    '../../../configs/_base_/default_runtime.py',
    './_base_/mec.py',
]
custom_imports = dict(imports=['projects.TokenUnify.tokenunify'],
                      allow_failed_imports=False)
# Official schedule (src/main_finetune.py, util_mamba/lr_sched.py): lr =
# blr * effective batch / 256; an epoch is the 10,000 samples of the
# fine-tuning dataset split over the GPUs by DistributedSampler, in batches
# with drop_last, so 10000 // 8 // 6 = 208 iterations; the cosine runs per
# iteration from lr to min_lr over all epochs, warm-up 0.
num_gpus, batch_per_gpu, epochs, base_lr = 8, 6, 400, 1e-4
min_lr = 1e-6  # official --min_lr default
samples_per_epoch = 10000
max_iters = epochs * (samples_per_epoch // num_gpus // batch_per_gpu)
model = dict(
    type='AffinitySegmentor',
    backbone=dict(type='EMMamba', arch='base', out_channels=3,
                  kernel_size=(1, 5, 5)),
    # official: one positive fraction per crop pooled over the 3 channels
    # (per_channel=True: one per channel)
    affinity_loss=dict(type='ClassBalancedMSELoss', per_channel=False),
    postprocessor=dict(type='WatershedAgglomeration', threshold=0.5),
    inference=dict(window=(16, 160, 160), overlap=0.25, batch_size=4),
)
train_dataloader = {{_base_.seg_train_dataloader}}
val_dataloader = {{_base_.seg_test_dataloader}}
test_dataloader = val_dataloader
val_evaluator = {{_base_.seg_evaluator}}
test_evaluator = val_evaluator
# AdamW as timm's add_weight_decay: no decay on 1-D parameters (biases,
# norms, the Mamba D); no gradient clipping (official --clip_grad default
# None; neither launcher sets it).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW',
                   lr=base_lr * num_gpus * batch_per_gpu / 256,
                   betas=(0.9, 0.95), weight_decay=0.05),
    paramwise_cfg=dict(flat_decay_mult=0.0))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=max_iters, eta_min=min_lr,
         by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=10000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(checkpoint=dict(interval=10000))
