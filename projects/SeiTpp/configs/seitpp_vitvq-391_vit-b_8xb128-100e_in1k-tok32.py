# SeiT++ (Lee et al., ECCV 2024), ViT-B fine-tuned from MTM on ImageNet-1k
# tokens: 77.8 top-1 (paper_tables.md 2.1). Recipe of naver-ai/seit
# README_seit++.md and main_mtm_finetune.py: the token ViT (learned token
# embedding, Conv k2 s2, GAP), drop path 0.1, head init std 2e-5; per
# sample Emb-Noise 0.375 / ColorAdapt 0.125 / nothing (the official
# per-batch RandomChoice 0.75 / 0.25, each on half the batch), half the
# batch RRC (0.08-1) + CutMix 1.0, half TokenAdapt with mixup 0.8 + CutMix
# 1.0 in f-space, label smoothing 0.1, re-quantised to codes; AdamW wd 0.1
# with layer-wise lr decay 0.65 (the README's value; the script's default
# is 0.75) and the token embedding at the top layer, undecayed, as the
# official code leaves it ('top'; 0 is the BEiT-consistent choice);
# lr = blr x sqrt(effective batch) / 8 with blr 1e-3 (4e-3 at 1024); 100
# epochs, 5 warm-up, cosine to 1e-6 (per layer: x its lr scale, as MAE).
# Set model.pretrained to the MTM checkpoint.
_base_ = ['../../../configs/_base_/default_runtime.py',
          './_base_/seit_in1k_tokens.py']
custom_imports = dict(imports=['projects.SeiTpp.seitpp'],
                      allow_failed_imports=False)
mtm_checkpoint = ('work_dirs/seitpp-mtm_vitvq-391_vit-b_8xb128-400e_in1k-'
                  'tok32/iter_500400.pth')
model = dict(
    type='TokenViTClassifier', num_classes={{_base_.num_classes}},
    num_codes=391, code_dim=32, img_size=28, embed_dim=768, depth=12,
    num_heads=12, drop_path_rate=0.1, label_smoothing=0.1,
    head_init_std=2e-5, pretrained=mtm_checkpoint,
    data_preprocessor=dict(
        type='TokenEmbeddingPreprocessor',
        codebook_file={{_base_.codebook_file}}, output='codes',
        crop_size=28, crop_mode='embedding', rrc_scale=(0.08, 1.0),
        color_order='before_crop', noise_prob=0.375, color_adapt_prob=0.125,
        num_classes={{_base_.num_classes}},
        mixup=dict(cutmix_alpha=1.0, mixup_alpha=0.0, label_smoothing=0.1),
        token_adapt=dict(type='TokenAdapt', num_codes=391, code_dim=32),
        token_adapt_checkpoint={{_base_.token_adapt_checkpoint}},
        token_adapt_ratio=0.5,
        token_adapt_mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0,
                               label_smoothing=0.1)))
iters_per_epoch = 1281167 // (8 * 128)
epochs, warmup_epochs = 100, 5
max_iters = epochs * iters_per_epoch
warmup_iters = warmup_epochs * iters_per_epoch
blr = 1e-3
optim_wrapper = dict(
    type='OptimWrapper', constructor='LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=blr, betas=(0.9, 0.999),
                   weight_decay=0.1),
    paramwise_cfg=dict(layer_decay_rate=0.65, token_embedding_layer='top'))
# lr = blr x sqrt(gpus x batch / 64) = blr x sqrt(effective batch) / 8
auto_scale_lr = dict(base_batch_size=64, rule='sqrt', enable=True)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=False, begin=0,
         end=warmup_iters),
    # 1e-6 at the scaled 4e-3, per layer group (MAE's min_lr x lr_scale)
    dict(type='CosineAnnealingLR', eta_min_ratio=1e-6 / 4e-3,
         by_epoch=False, begin=warmup_iters, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=5 * iters_per_epoch)
default_hooks = dict(checkpoint=dict(interval=iters_per_epoch,
                                     max_keep_ckpts=2))
