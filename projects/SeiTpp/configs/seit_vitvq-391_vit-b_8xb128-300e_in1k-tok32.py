# SeiT (Park et al., ICCV 2023), ViT-B on ImageNet-1k tokens: 74.0 top-1
# (paper_tables.md 2.1). Recipe of naver-ai/seit main_seit.py (DeiT):
# Token-EDA (synonym 0.25 / swap 0.25 per sample), RRC of the token map
# (scale 0.08-1, bicubic: on the codebook embedding, equal to the official
# one-hot route), codebook embedding, Emb-Noise (0.5 of batches x 0.5 of
# their samples -> 0.25 per sample), CutMix 1.0 with label smoothing 0.1,
# the Stem-Adapter ViT-B with global average pooling, drop path 0.1; AdamW
# lr 7.5e-4 x batch / 512 (1.5e-3 at 1024), wd 0.1, 300 epochs, 5 warm-up
# epochs from 1e-6, cosine to 1e-5. main_seit.py's defaults also apply
# ColorAdapt (0.25 x 0.5), which SeiT++ introduced; the SeiT row is the SeiT
# paper's recipe without it (set color_adapt_prob=0.125 for the script's
# defaults).
_base_ = ['../../../configs/_base_/default_runtime.py',
          './_base_/seit_in1k_tokens.py']
custom_imports = dict(imports=['projects.SeiTpp.seitpp'],
                      allow_failed_imports=False)
model = dict(
    type='SeiTViTClassifier', num_classes={{_base_.num_classes}},
    code_dim=32, img_size=28, stem_kernel=4, stem_stride=2, stem_padding=1,
    embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.1,
    label_smoothing=0.1,
    data_preprocessor=dict(
        type='TokenEmbeddingPreprocessor',
        codebook_file={{_base_.codebook_file}}, output='embedding',
        crop_size=28, crop_mode='embedding', rrc_scale=(0.08, 1.0),
        color_order='after_crop', noise_prob=0.25, color_adapt_prob=0.0,
        num_classes={{_base_.num_classes}},
        mixup=dict(cutmix_alpha=1.0, mixup_alpha=0.0, label_smoothing=0.1),
        token_adapt=None, token_adapt_mixup=None))
train_dataloader = dict(dataset=dict(pipeline=[
    dict(type='TokenEDA', synonyms={{_base_.synonyms_file}},
         synonym_prob=0.25, swap_prob=0.25, token_prob=0.25, top_k=5)
]))
iters_per_epoch = 1281167 // (8 * 128)  # ImageNet-1k train, 8 x 128
epochs, warmup_epochs = 300, 5
max_iters = epochs * iters_per_epoch
warmup_iters = warmup_epochs * iters_per_epoch
base_lr = 7.5e-4
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=base_lr, weight_decay=0.1),
    # timm create_optimizer: no weight decay on 1-D parameters and on the
    # position embedding / class token
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                       custom_keys=dict(pos_embed=dict(decay_mult=0.0),
                                        cls_token=dict(decay_mult=0.0))))
# lr = 7.5e-4 x (gpus x batch) / 512
auto_scale_lr = dict(base_batch_size=512, rule='linear', enable=True)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / (2 * base_lr), by_epoch=False,
         begin=0, end=warmup_iters),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=False,
         begin=warmup_iters, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=10 * iters_per_epoch)
default_hooks = dict(checkpoint=dict(interval=iters_per_epoch,
                                     max_keep_ckpts=2))
