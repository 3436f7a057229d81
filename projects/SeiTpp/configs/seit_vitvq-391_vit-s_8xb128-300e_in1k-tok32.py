# SeiT ViT-S (384-d, 6 heads; models.py deit_small_token_32).
_base_ = ['./seit_vitvq-391_vit-b_8xb128-300e_in1k-tok32.py']
model = dict(embed_dim=384, num_heads=6)
