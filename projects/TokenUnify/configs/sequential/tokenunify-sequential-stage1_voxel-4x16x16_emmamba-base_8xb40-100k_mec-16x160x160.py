# Sequential TokenUnify (the release / v1 paper), stage 1 of 2: random-token
# pre-training at 40 / GPU x 8, lr 1e-3 x 320 / 256 = 1.25e-3, no warm-up,
# cosine to 0 (`src/run_mamba_mae.sh`: `main_pretrain.py --batch_size=40
# --warmup_epochs=0 --fill_mode=1 --mask_ratio=0.4`). Stage 2 is
# tokenunify-sequential-stage2_voxel-4x16x16_emmamba-base_8xb20-100k_mec-16x160x160.py.
_base_ = ['../tokenunify-random_voxel-4x16x16_emmamba-base_8xb20-100k_mec-16x160x160.py']
num_gpus, batch_per_gpu = 8, 40
train_dataloader = dict(batch_size=batch_per_gpu)
optim_wrapper = dict(
    optimizer=dict(lr=1e-3 * num_gpus * batch_per_gpu / 256))
