# TiTok-L-32 stage 1 (README: rFID 2.21 after stage 2); 610,314,252
# parameters without the teacher.
#
# TiTok two-stage tokenizer, stage 1 (Yu et al. 2024, "An Image is Worth 32
# Tokens for Reconstruction and Generation"; bytedance/1d-tokenizer
# configs/training/TiTok/stage1/titok_l32.yaml). The primitive every TiTok /
# MARVEL config inherits from: TiTok-L-32 (large latent-token ViT encoder and
# decoder, K=32), l2-normalised VQ 4096 x 12, proxy head (hidden 2 x width,
# tanh) over the frozen MaskGIT-VQGAN teacher's 1024 codes; legacy latent
# reshape on (the released checkpoints need it, TiTok issue #17); the encoder
# sees [0, 1] images as in TiTok.
# AdamW lr 1e-4 (0.9, 0.99) wd 1e-4 (TiTok's exemptions:
# _base_/schedules/titok_weight_decay.py), 10k warm-up then cosine to 1e-5 over
# 1M iterations, 8 GPUs x 32 images, fp16, grad-clip 1.0, EMA 0.999.
_base_ = [
    '../_base_/models/maskgit_vqgan_conv-f16.py',
    '../_base_/datasets/imagenet_256_titok.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/titok_weight_decay.py',
]
# the MaskGIT-VQGAN teacher converted to vistok
# (configs/maskgit_vqgan/README.md)
teacher_path = 'checkpoints/maskgit-vqgan-imagenet-f16-256_vistok.pth'
size, num_latent_tokens, token_size, image_size = 'L', 32, 12, 256
teacher = {{_base_.model}}
model = dict(
    _delete_=True,
    type='TiTokTokenizer',
    encoder=dict(type='LatentTokenEncoder',
                 size=size,
                 num_latent_tokens=num_latent_tokens,
                 out_channels=token_size,
                 img_size=image_size,
                 patch_size=16),
    quantizer=dict(type='VectorQuantizer',
                   codebook_size=4096,
                   embed_dim=token_size,
                   use_l2_norm=True,
                   commitment_weight=0.25),
    decoder=dict(type='LatentTokenDecoder',
                 size=size,
                 num_latent_tokens=num_latent_tokens,
                 in_channels=token_size,
                 img_size=image_size,
                 patch_size=16),
    head='proxy',
    num_proxy_codes=1024,
    teacher=teacher,
    teacher_path=teacher_path,
    is_legacy=True,
    # TiTok's encoder sees images in [0, 1]
    pixel_range=(0.0, 1.0),
    ema=dict(decay=0.999, use_for_val=True),
)
num_gpus, batch_per_gpu = 8, 32
max_iters, warmup_iters = 1000000, 10000
train_dataloader = dict(batch_size=batch_per_gpu)
optim_wrapper = dict(type='AmpOptimWrapper',
                     dtype='float16',
                     optimizer=dict(type='AdamW',
                                    lr=1e-4,
                                    betas=(0.9, 0.99),
                                    weight_decay=1e-4),
                     paramwise_cfg={{_base_.titok_paramwise_cfg}},
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR',
         start_factor=1e-3,
         by_epoch=False,
         begin=0,
         end=warmup_iters),
    dict(type='CosineAnnealingLR',
         eta_min=1e-5,
         by_epoch=False,
         begin=warmup_iters,
         end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop',
                 max_iters=max_iters,
                 val_interval=50000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(checkpoint=dict(interval=50000))
# codebook entropy in bits, as TiTok's evaluator reports it (1d-tokenizer
# evaluator/evaluator.py: log2 of the code frequencies)
val_evaluator = [
    dict(metric, log_base=2) if metric['type'] == 'CodebookUsage' else metric
    for metric in _base_.val_evaluator
]
test_evaluator = val_evaluator
