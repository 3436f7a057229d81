# Scaling figure, Transformer: the curriculum TokenUnify pre-training of
# the UNETR of unetr-seg_affinity-3_unetr-1b_8xb6-400e_mec-16x160x160.py
# (1,020,153,153 parameters with the 1-channel output).
_base_ = ['../tokenunify-curriculum_voxel-4x16x16_emmamba-base_8xb20-100k_mec-16x160x160.py']
model = dict(backbone=dict(_delete_=True, type='UNETR', img_size=(16, 160, 160),
                           out_channels=1, feature_size=64, hidden_size=2560,
                           mlp_dim=10240, num_heads=20))
