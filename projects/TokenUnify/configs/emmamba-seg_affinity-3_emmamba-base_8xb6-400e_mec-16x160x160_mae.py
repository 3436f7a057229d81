# Table 1 row EMmamba* (random-token "MAE" pre-training; Wafer4 waterz VOI 1.2680 / ARAND 0.0862): fine-tuning from the pre-trained backbone of
# tokenunify-random_voxel-4x16x16_emmamba-base_8xb20-100k_mec-16x160x160.py (set pretrained_checkpoint to its last checkpoint). Only the output
# conv (1 -> 3 channels) may differ; anything else that does not fit is an
# error (the official code loads with strict=False and silently drops it).
_base_ = ['./emmamba-seg_affinity-3_emmamba-base_8xb6-400e_mec-16x160x160.py']
pretrained_checkpoint = 'work_dirs/tokenunify-random_voxel-4x16x16_emmamba-base_8xb20-100k_mec-16x160x160/iter_100000.pth'
model = dict(pretrained=dict(
    checkpoint=pretrained_checkpoint,
    allow_shape_mismatch=[r'backbone\.final_conv\..*'],
    allow_unexpected=[r'mask_token', r'next_token_head\..*']))
