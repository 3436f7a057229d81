# Scaling figure, Transformer, column TokenUnify: unetr-seg_affinity-3_unetr-100m_8xb6-400e_mec-16x160x160.py
# from the last checkpoint of tokenunify-curriculum_voxel-4x16x16_unetr-100m_8xb20-100k_mec-16x160x160.py.
# Only the output conv (1 -> 3 channels) may differ; the pre-training-only
# parameters (learned fill, next-token head) are named explicitly.
_base_ = ['./unetr-seg_affinity-3_unetr-100m_8xb6-400e_mec-16x160x160.py']
pretrained_checkpoint = 'work_dirs/tokenunify-curriculum_voxel-4x16x16_unetr-100m_8xb20-100k_mec-16x160x160/iter_100000.pth'
model = dict(pretrained=dict(
    checkpoint=pretrained_checkpoint,
    allow_shape_mismatch=[r'backbone\.net\.out\.conv\.conv\..*'],
    allow_unexpected=[r'mask_token', r'next_token_head\..*']))
