# Scaling figure, Transformer: the random-token ("MAE") pre-training
# of ../tokenunify-random_voxel-4x16x16_emmamba-base_8xb20-100k_mec-16x160x160.py
# with the UNETR of unetr-seg_affinity-3_unetr-100m_8xb6-400e_mec-16x160x160.py.
_base_ = ['../tokenunify-random_voxel-4x16x16_emmamba-base_8xb20-100k_mec-16x160x160.py']
model = dict(backbone=dict(_delete_=True, type='UNETR', img_size=(16, 160, 160),
                           out_channels=1, feature_size=32, hidden_size=768,
                           mlp_dim=3072, num_heads=12))
