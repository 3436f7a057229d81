# SeiT++ MTM with a ViT-S encoder (384-d, 6 heads).
_base_ = ['./seitpp-mtm_vitvq-391_vit-b_8xb128-400e_in1k-tok32.py']
model = dict(embed_dim=384, num_heads=6)
