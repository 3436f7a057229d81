# AC4 (train) / AC3 (test) fine-tuning from the TokenUnify pre-trained EMmamba-base (the
# last checkpoint of tokenunify-curriculum_voxel-4x16x16_emmamba-base_8xb20-100k_mec-16x160x160.py): the
# from-scratch config plus the pre-trained weights. Only the output conv
# (1 -> 3 channels) may differ; the pre-training-only parameters (learned
# fill, next-token head) are named explicitly.
_base_ = ['./emmamba-seg_affinity-3_emmamba-base_8xb6-400e_ac34-16x160x160.py']
pretrained_checkpoint = 'work_dirs/tokenunify-curriculum_voxel-4x16x16_emmamba-base_8xb20-100k_mec-16x160x160/iter_100000.pth'
model = dict(pretrained=dict(
    checkpoint=pretrained_checkpoint,
    allow_shape_mismatch=[r'backbone\.final_conv\..*'],
    allow_unexpected=[r'mask_token', r'next_token_head\..*']))
