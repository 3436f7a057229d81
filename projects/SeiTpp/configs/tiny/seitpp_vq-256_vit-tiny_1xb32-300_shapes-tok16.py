# SeiT++ fine-tuning in miniature on CPU: the 6-way shape class of the
# embedded procedural images from their stored tokens (see the MTM config),
# the token ViT (2 blocks, 64-d) initialised from the tiny MTM checkpoint
# (`model.pretrained`; None trains from scratch), SeiT++'s per-sample
# Emb-Noise / ColorAdapt, RRC + CutMix with label smoothing, layer decay
# 0.65 (token embedding at the top, as the official code) and the square-root
# lr rule. No TokenAdapt (none is trained in the tiny runs).
_base_ = ['./seitpp-mtm_vq-256_vit-tiny_1xb32-300_shapes-tok16.py']
model = dict(
    _delete_=True, type='TokenViTClassifier', num_classes=6,
    num_codes={{_base_.num_codes}}, code_dim={{_base_.code_dim}},
    img_size={{_base_.crop}}, embed_dim=64, depth=2, num_heads=2,
    drop_path_rate=0.1, label_smoothing=0.1, head_init_std=2e-5,
    pretrained=None,
    data_preprocessor=dict(
        type='TokenEmbeddingPreprocessor',
        codebook_file={{_base_.codebook_file}}, output='codes',
        crop_size={{_base_.crop}}, rrc_scale=(0.08, 1.0),
        noise_prob=0.375, color_adapt_prob=0.125, num_classes=6,
        mixup=dict(cutmix_alpha=1.0, mixup_alpha=0.0, label_smoothing=0.1),
        token_adapt=None, token_adapt_mixup=None))
val_evaluator = dict(_delete_=True, type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper',
    constructor='LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999),
                   weight_decay=0.1),
    paramwise_cfg=dict(layer_decay_rate=0.65, token_embedding_layer='top'))
auto_scale_lr = dict(base_batch_size=64, rule='sqrt', enable=True)
