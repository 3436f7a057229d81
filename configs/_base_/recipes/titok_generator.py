# TiTok's generator recipe (Yu et al. 2024; bytedance/1d-tokenizer
# configs/training/generator), shared by every MaskGIT generator trained on
# 1-D tokens: arccos masking, label smoothing 0.1, weight 0.1 on unmasked
# tokens, class dropout 0.1, AdamW lr 2e-4 (0.9, 0.96) wd 0.03, 500k steps
# at global batch 2048 (32 x 64), an EMA copy. A generator config sets
# model.arch, vocab_size, token_shape, steps and the sampler, and
# token_root.
_base_ = [
    '../datasets/imagenet_tokens.py',
    '../schedules/adamw_generator.py',
    '../default_runtime.py',
]
token_root = 'data/tokens/imagenet-train'
model = dict(
    type='MaskGITGenerator',
    num_classes=1000,
    mask_schedule='arccos',
    label_smoothing=0.1,
    unmasked_weight=0.1,
    class_dropout_prob=0.1,
)
train_dataloader = dict(batch_size=64, dataset=dict(data_root=token_root))
optim_wrapper = dict(optimizer=dict(lr=2e-4, betas=(0.9, 0.96),
                                    weight_decay=0.03))
train_cfg = dict(max_iters=500000)
# TiTok trains its generators with an EMA copy (decay not given in the
# reference notes; 0.9999 here). mmengine's EMAHook writes the EMA weights
# into the checkpoint's state_dict, so tools/sample.py samples with them.
custom_hooks = [dict(type='EMAHook', momentum=1e-4)]
