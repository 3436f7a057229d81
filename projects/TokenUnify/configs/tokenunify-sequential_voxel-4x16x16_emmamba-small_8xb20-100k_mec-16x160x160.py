# The sequential pre-training with EMmamba-small (the scaling study of Fig. 4).
_base_ = ['./tokenunify-sequential_voxel-4x16x16_emmamba-base_8xb20-100k_mec-16x160x160.py']
model = dict(backbone=dict(arch='small'))
