# SeiT++ masked token modelling (Lee et al., ECCV 2024), ViT-B encoder on
# ImageNet-1k tokens (naver-ai/seit README_seit++.md and
# main_mtm_pretrain.py): MAGE-style MTM with a learned token embedding, mask
# ratio TruncNormal(0.45, 0.25) on [0.4, 1] per batch (the first ceil(196 x
# 0.4) masked patches dropped), 4-block 512-d decoder; half of every batch
# gets the base RRC (scale 0.2-1, bicubic on the embedding map) and half
# TokenAdapt (f -> flip / affine -> RRC 56 -> g), no colour augmentation,
# no mixing; AdamW betas (0.9, 0.95), wd 0.05 (none on 1-D parameters),
# blr 1.5e-4 x effective batch / 256 (2.4e-3 at 128 x 8 GPUs x 4
# accumulation), 400 epochs with 40 warm-up epochs, cosine to 0.
# The TokenAdapt weights: tools/convert_tokenadapt.py of the released
# tokenadapt.ckpt, or a TokenAdaptTrainer run (tokenadapt_*.py).
_base_ = ['../../../configs/_base_/default_runtime.py',
          './_base_/seit_in1k_tokens.py']
custom_imports = dict(imports=['projects.SeiTpp.seitpp'],
                      allow_failed_imports=False)
model = dict(
    type='MaskedTokenModel', num_codes=391, code_dim=32, img_size=28,
    patch_size=2, embed_dim=768, depth=12, num_heads=12,
    decoder_embed_dim=512, decoder_depth=4, decoder_num_heads=16,
    mask_ratio=dict(min=0.4, max=1.0, mean=0.45, std=0.25),
    label_smoothing=0.0,
    data_preprocessor=dict(
        type='TokenEmbeddingPreprocessor',
        codebook_file={{_base_.codebook_file}}, output='codes',
        crop_size=28, crop_mode='embedding', rrc_scale=(0.2, 1.0),
        noise_prob=0.0, color_adapt_prob=0.0, mixup=None,
        token_adapt=dict(type='TokenAdapt', num_codes=391, code_dim=32),
        token_adapt_checkpoint={{_base_.token_adapt_checkpoint}},
        token_adapt_ratio=0.5, token_adapt_mixup=None))
iters_per_epoch = 1281167 // (8 * 128)  # batches; 4 of them per step
epochs, warmup_epochs = 400, 40
max_iters = epochs * iters_per_epoch
warmup_iters = warmup_epochs * iters_per_epoch
optim_wrapper = dict(
    type='OptimWrapper', accumulative_counts=4,
    optimizer=dict(type='AdamW', lr=1.5e-4, betas=(0.9, 0.95),
                   weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                       custom_keys=dict(pos_embed=dict(decay_mult=0.0),
                                        cls_token=dict(decay_mult=0.0),
                                        mask_token=dict(decay_mult=0.0))))
# blr x (gpus x batch x accumulation) / 256
auto_scale_lr = dict(base_batch_size=256, rule='linear', enable=True)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=False, begin=0,
         end=warmup_iters),
    dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=False,
         begin=warmup_iters, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=50 * iters_per_epoch)
# held-out masked-token accuracy (the official script has no validation)
val_evaluator = dict(_delete_=True, type='MaskedTokenAccuracy')
test_evaluator = val_evaluator
default_hooks = dict(checkpoint=dict(interval=iters_per_epoch,
                                     max_keep_ckpts=2))
