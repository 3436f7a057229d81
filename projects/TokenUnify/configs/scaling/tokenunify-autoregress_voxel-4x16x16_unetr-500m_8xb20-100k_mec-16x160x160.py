# Scaling figure, Transformer: the AutoRegress-only (next + next-all) pre-training
# of ../tokenunify-autoregress_voxel-4x16x16_emmamba-base_8xb20-100k_mec-16x160x160.py
# with the UNETR of unetr-seg_affinity-3_unetr-500m_8xb6-400e_mec-16x160x160.py.
_base_ = ['../tokenunify-autoregress_voxel-4x16x16_emmamba-base_8xb20-100k_mec-16x160x160.py']
model = dict(backbone=dict(_delete_=True, type='UNETR', img_size=(16, 160, 160),
                           out_channels=1, feature_size=64, hidden_size=1792,
                           mlp_dim=7168, num_heads=16))
