# Scaling figure (Fig. 4 of v1), Transformer, column Random: the Table 1
# fine-tuning with a UNETR of 526,870,723 parameters (MONAI's UNETR, 12 ViT
# layers on 16^3 patches, widths chosen for the "500M" point; counted
# on the meta device, not checked against a paper number).
_base_ = ['../emmamba-seg_affinity-3_emmamba-base_8xb6-400e_mec-16x160x160.py']
model = dict(backbone=dict(_delete_=True, type='UNETR', img_size=(16, 160, 160),
                           out_channels=3, feature_size=64, hidden_size=1792,
                           mlp_dim=7168, num_heads=16))
