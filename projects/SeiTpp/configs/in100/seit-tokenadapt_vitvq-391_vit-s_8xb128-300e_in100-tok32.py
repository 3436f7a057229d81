# Ablation row "+ TokenAdapt" (80.4): half of every batch through TokenAdapt
# (f -> flip / affine -> RRC -> CutMix in f-space -> g), as SeiT++ does.
_base_ = ['./seit_vitvq-391_vit-s_8xb128-300e_in100-tok32.py']
token_adapt_checkpoint = 'data/seit/tokenadapt.pth'
model = dict(data_preprocessor=dict(
    token_adapt=dict(_delete_=True, type='TokenAdapt', num_codes=391,
                     code_dim=32),
    token_adapt_checkpoint=token_adapt_checkpoint, token_adapt_ratio=0.5,
    token_adapt_mixup=dict(_delete_=True, cutmix_alpha=1.0,
                           mixup_alpha=0.0, label_smoothing=0.1)))
