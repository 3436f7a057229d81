# TiTok's generator recipe (Yu et al. 2024), shared by every MaskGIT
# generator trained on 1-D tokens. Official facts (bytedance/1d-tokenizer at
# 942a96fbdd873780179d1b78d5462911528bf8c8: configs/training/generator/
# maskgit.yaml, scripts/train_maskgit.py, utils/train_utils.py,
# utils/lr_schedulers.py, modeling/modules/ema_model.py, modeling/maskgit.py,
# sample_imagenet_titok.py): arccos masking, label smoothing 0.1, weight 0.1
# on unmasked tokens, class dropout 0.1, AdamW lr 2e-4 (0.9, 0.96) wd 0.03,
# gradient clipping 1.0, 500k steps at global batch 2048 (32 x 64), 10k
# warm-up steps then cosine to 1e-5, bf16 autocast, EMA decay 0.999, images
# resized (short side 256) and centre-cropped to 256 with a random
# horizontal flip, tokenised by the frozen tokenizer. A generator config sets
# model.arch, vocab_size, token_shape, steps, choice_temperature and the
# sampler (configs/infer/TiTok/*.yaml), and token_root.
_base_ = [
    '../datasets/imagenet_tokens.py',
    '../schedules/adamw_generator.py',
    '../default_runtime.py',
    '../schedules/titok_weight_decay.py',
]
token_root = 'data/tokens/imagenet-train'
model = dict(
    type='MaskGITGenerator',
    num_classes=1000,
    mask_schedule='arccos',
    label_smoothing=0.1,
    unmasked_weight=0.1,
    class_dropout_prob=0.1,
    # TiTok's sampler (ImageBert.generate as sample_imagenet_titok.py calls
    # it for gFID: softmax_temperature_annealing=True, guidance_scale_pow
    # 3.0): Gumbel-max tokens and raw-logit confidence at the annealed
    # temperature, logits divided by 0.5 + 0.8 (1 - (t+1)/T)
    sampling_mode='titok',
    softmax_temperature_annealing=True,
)
# Flip: the official tokenises the centre crop or its horizontal flip online
# (SimpleImageDataset, random_crop False, random_flip True). The frozen
# tokenizer and the fixed crop leave exactly two token sequences per image,
# so token_root holds both, exported once (tools/export_tokens.py
# --hflip-pairs: sample 2i the crop, 2i + 1 its flip): every image is seen
# in both orientations per pass over the 2N samples instead of a coin per
# visit, at no tokenizer cost during training.
train_dataloader = dict(batch_size=64, dataset=dict(data_root=token_root))
total_iters = 500000
warmup_iters = 10000
# bf16 autocast without a loss scaler (accelerate's mixed_precision bf16);
# on a machine without CUDA the wrapper autocasts on the CPU (still bf16)
optim_wrapper = dict(type='AutocastOptimWrapper', dtype='bfloat16',
                     optimizer=dict(lr=2e-4, betas=(0.9, 0.96),
                                    weight_decay=0.03),
                     # TiTok's exemptions (same create_optimizer)
                     paramwise_cfg={{_base_.titok_paramwise_cfg}})
# get_cosine_schedule_with_warmup (accelerate steps it num_processes times
# per update and scales both step counts by num_processes: per update the
# schedule is): lr(k) = 2e-4 k / 10k during the warm-up, then
# 1e-5 + (2e-4 - 1e-5) (1 + cos(pi (k - 10k) / 490k)) / 2. mmengine's
# LinearLR reaches its end factor at end - 1 and cannot start from 0:
# lr(k) = 2e-4 (1e-6 + (1 - 1e-6) k / 10k), within 2e-10 of the official.
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
         end=warmup_iters + 1),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=False,
         begin=warmup_iters, end=total_iters,
         T_max=total_iters - warmup_iters),
]
train_cfg = dict(max_iters=total_iters)
# EMA decay 0.999 (create_model_and_loss_module: EMAModel(decay=0.999),
# updated every step). The official's decay also warms up as
# min((1 + s) / (10 + s), 0.999), reaching 0.999 after ~9k of 500k steps;
# not reproduced (no effect on the final weights: 0.999^491000 ~ 0).
# mmengine's EMAHook writes the EMA weights into the checkpoint's
# state_dict, so tools/sample.py samples with them.
custom_hooks = [
    dict(type='EMAHook', ema_type='ExponentialMovingAverage', momentum=1e-3)
]
