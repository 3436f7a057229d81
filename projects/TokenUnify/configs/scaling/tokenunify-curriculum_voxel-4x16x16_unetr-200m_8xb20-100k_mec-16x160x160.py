# Scaling figure, Transformer: the curriculum TokenUnify pre-training of
# the UNETR of unetr-seg_affinity-3_unetr-200m_8xb6-400e_mec-16x160x160.py
# (211,714,849 parameters with the 1-channel output).
_base_ = ['../tokenunify-curriculum_voxel-4x16x16_emmamba-base_8xb20-100k_mec-16x160x160.py']
model = dict(backbone=dict(_delete_=True, type='UNETR', img_size=(16, 160, 160),
                           out_channels=1, feature_size=32, hidden_size=1152,
                           mlp_dim=4608, num_heads=16))
