# EMmamba-base affinity fine-tuning on the MEC wafers as the second official
# MEC launcher, `src/run_MEC_seg.sh` (`main_finetune2.py --batch_size=20
# --epochs=800 --warmup_epochs=0 --blr=1e-5` on 8 GPUs). It differs from
# `..._8xb6-400e_mec-16x160x160.py` (`src/run_mamba_seg.sh`) only in
#   batch 20 / GPU instead of 6 (effective 160 instead of 48),
#   800 epochs instead of 400 (10000 // 8 // 20 = 62 iterations an epoch:
#       49,600 iterations instead of 83,200),
#   base lr 1e-5 instead of 1e-4, i.e. lr 1e-5 x 160 / 256 = 6.25e-6
#       instead of 1e-4 x 48 / 256 = 1.875e-5 (same linear rule,
#       src/main_finetune2.py), cosine to the same min_lr 1e-6.
# Everything else (loss, AdamW, no clipping, crops, test) is the base's;
# the official crop of this launcher comes from a YAML file that is not
# released (`cfg.MODEL.crop_size`), kept at 16x160x160.
_base_ = ['./emmamba-seg_affinity-3_emmamba-base_8xb6-400e_mec-16x160x160.py']
num_gpus, batch_per_gpu, epochs, base_lr = 8, 20, 800, 1e-5
min_lr = 1e-6
samples_per_epoch = 10000
max_iters = epochs * (samples_per_epoch // num_gpus // batch_per_gpu)
train_dataloader = dict(batch_size=batch_per_gpu)
optim_wrapper = dict(
    optimizer=dict(lr=base_lr * num_gpus * batch_per_gpu / 256))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=max_iters, eta_min=min_lr,
         by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(max_iters=max_iters)
