# "SeiT++ w/o MTM" (paper_tables.md 2.2 / 2.4: 75.5 top-1): the token ViT
# with SeiT++'s augmentation (ColorAdapt, TokenAdapt) trained from scratch.
# Inferred (not in the released scripts): SeiT's 300-epoch schedule and
# optimiser (AdamW lr 7.5e-4 x batch / 512, wd 0.1, no layer decay, 5
# warm-up epochs from 1e-6, cosine to 1e-5) and timm's head init.
_base_ = ['./seitpp_vitvq-391_vit-b_8xb128-100e_in1k-tok32.py']
model = dict(pretrained=None, head_init_std=0.02)
iters_per_epoch = 1281167 // (8 * 128)
epochs, warmup_epochs = 300, 5
max_iters = epochs * iters_per_epoch
warmup_iters = warmup_epochs * iters_per_epoch
base_lr = 7.5e-4
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=base_lr, weight_decay=0.1),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                       custom_keys=dict(pos_embed=dict(decay_mult=0.0),
                                        cls_token=dict(decay_mult=0.0))))
auto_scale_lr = dict(base_batch_size=512, rule='linear', enable=True)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / (2 * base_lr), by_epoch=False,
         begin=0, end=warmup_iters),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=False,
         begin=warmup_iters, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=10 * iters_per_epoch)
