# The synthetic fine-tuning started from a TokenUnify pre-trained backbone
# (set `pretrained_checkpoint`, e.g. the last checkpoint of
# tokenunify-curriculum_voxel-4x16x16_emmamba-tiny_1xb4-150_synthetic-16x32x32.py).
# Only the 1-channel output conv may differ (3 affinity channels here);
# the pre-training-only parameters (the learned fill mask_token, the
# next-token head next_token_head.*) are named explicitly.
_base_ = ['./emmamba-seg_affinity-3_emmamba-tiny_1xb4-300_synthetic-16x32x32.py']
pretrained_checkpoint = 'work_dirs/tokenunify-tiny/iter_150.pth'
model = dict(pretrained=dict(
    checkpoint=pretrained_checkpoint,
    allow_shape_mismatch=[r'backbone\.final_conv\..*'],
    allow_unexpected=[r'mask_token', r'next_token_head\..*']))
