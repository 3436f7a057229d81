# Scaling figure (Fig. 4 of v1), Mamba, column TokenUnify: the Table 1
# fine-tuning_tokenunify with EMmamba-large, from the last checkpoint of
# ../tokenunify-curriculum_voxel-4x16x16_emmamba-large_8xb20-100k_mec-16x160x160.py.
_base_ = ['../emmamba-seg_affinity-3_emmamba-base_8xb6-400e_mec-16x160x160_tokenunify.py']
pretrained_checkpoint = 'work_dirs/tokenunify-curriculum_voxel-4x16x16_emmamba-large_8xb20-100k_mec-16x160x160/iter_100000.pth'
model = dict(backbone=dict(arch='large'),
             pretrained=dict(checkpoint=pretrained_checkpoint))
