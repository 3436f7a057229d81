# TiTok-L-32 stage 2 (README: rFID 2.21); 641,054,735 parameters (stage 1
# plus the MaskGIT-VQGAN decoder and codebook). The converted release
# (tools/model_converters/titok.py) loads into this model for testing.
#
# TiTok two-stage tokenizer, stage 2 (decoder fine-tuning on pixels;
# bytedance/1d-tokenizer configs/training/TiTok/stage2/titok_l32.yaml): the
# stage-1 model (`stage1_checkpoint`) gets a pixel decoder: the proxy logits'
# softmax weights a trainable copy of the MaskGIT-VQGAN codebook
# (`pixel_codebook`) and the MaskGIT-VQGAN decoder (`pixel_decoder`, both
# initialised from the teacher file) renders images. Encoder and quantizer
# are frozen (eval mode, outside the optimizer); TiTok decoder, proxy head and
# pixel parts train with L2 + 0.1 x ConvNeXt-S logit loss + the MaskGIT
# discriminator (hinge, fixed weight 0.01 from iteration 20k, LeCam 0.001,
# EMA decay 0.999 of its statistics), every term on [0, 1] images as in
# TiTok (configs/_base_/losses/titok_pixel.py). AdamW lr 1e-4 (0.9, 0.999)
# wd 1e-4 for both, 5k warm-up then cosine to 1e-5 over 500k iterations,
# 8 x 32 images, fp16, EMA 0.999.
_base_ = [
    './titok_vq-4k_l32_8xb32-1m_in1k-256.py',
    '../_base_/losses/titok_pixel.py'
]
stage1_checkpoint = \
    'work_dirs/titok_vq-4k_l32_8xb32-1m_in1k-256/iter_1000000.pth'
model = dict(
    teacher=None,
    pixel_decoder={{_base_.teacher}},
    frozen_parts=('encoder', 'quantizer'),
    reconstruction_loss={{_base_.titok_reconstruction_loss}},
    perceptual_loss={{_base_.titok_perceptual_loss}},
    discriminator={{_base_.titok_discriminator}},
    adversarial_loss={{_base_.titok_adversarial_loss}},
    pretrained=dict(
        # the stage-1 model; the pixel parts and the GAN are new
        stage1=dict(
            checkpoint=stage1_checkpoint,
            allow_missing=[r'pixel_.*', r'ema\..*', r'discriminator\..*',
                           r'adversarial_loss\..*'],
            allow_unexpected=[r'ema\..*']),
        # pixel parts from the MaskGIT-VQGAN (TiTok initialises them so)
        pixel_parts=dict(
            checkpoint={{_base_.teacher_path}},
            prefix_map={'decoder.': 'pixel_decoder.',
                        'quantizer.codebook': 'pixel_codebook.weight'},
            select=[r'decoder\..*', r'quantizer\.codebook'],
            allow_missing=[r'(?!pixel_).*'])))
max_iters, warmup_iters = 500000, 5000
adamw = dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4)
optim_wrapper = dict(
    _delete_=True,
    constructor='MultiPartOptimWrapperConstructor',
    generator=dict(type='AmpOptimWrapper', dtype='float16', optimizer=adamw,
                   paramwise_cfg={{_base_.titok_paramwise_cfg}},
                   clip_grad=dict(max_norm=1.0)),
    discriminator=dict(type='AmpOptimWrapper', dtype='float16',
                       optimizer=adamw,
                       paramwise_cfg={{_base_.titok_paramwise_cfg}},
                       clip_grad=dict(max_norm=1.0)))
warmup_cosine = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0,
         end=warmup_iters),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=False,
         begin=warmup_iters, end=max_iters),
]
param_scheduler = dict(_delete_=True, generator=warmup_cosine,
                       discriminator=warmup_cosine)
train_cfg = dict(max_iters=max_iters)
