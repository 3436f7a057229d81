# Ablation row "+ ColorAdapt" (78.3): ColorAdapt added to the SeiT recipe
# with SeiT++'s rate (0.25 of batches x 0.5 of their samples).
_base_ = ['./seit_vitvq-391_vit-s_8xb128-300e_in100-tok32.py']
model = dict(data_preprocessor=dict(color_adapt_prob=0.125))
