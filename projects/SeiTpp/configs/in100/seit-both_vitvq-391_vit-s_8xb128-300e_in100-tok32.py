# Ablation row "ColorAdapt + TokenAdapt" (81.4).
_base_ = ['./seit-tokenadapt_vitvq-391_vit-s_8xb128-300e_in100-tok32.py']
model = dict(data_preprocessor=dict(color_adapt_prob=0.125))
