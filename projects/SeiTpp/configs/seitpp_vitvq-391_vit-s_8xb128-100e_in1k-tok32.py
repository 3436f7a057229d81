# SeiT++ ViT-S fine-tuned from the ViT-S MTM checkpoint.
_base_ = ['./seitpp_vitvq-391_vit-b_8xb128-100e_in1k-tok32.py']
mtm_checkpoint = ('work_dirs/seitpp-mtm_vitvq-391_vit-s_8xb128-400e_in1k-'
                  'tok32/iter_500400.pth')
model = dict(embed_dim=384, num_heads=6, pretrained=mtm_checkpoint)
