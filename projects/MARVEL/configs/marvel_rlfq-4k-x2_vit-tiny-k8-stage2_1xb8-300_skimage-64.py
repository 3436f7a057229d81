# CPU demo of stage 2 (the recipe of configs/titok/*-stage2_*.py at demo scale):
# the stage-1 demo's model gets a pixel decoder — softmax of the proxy logits
# over a trainable copy of the teacher's codebook, rendered by the teacher's
# decoder architecture, both initialised from the teacher file — and trains
# decoder, head and pixel parts on pixels (L2 + a small PatchGAN at fixed
# weight 0.01 from iteration 100 with LeCam 0.001; both on [0, 1] images as
# TiTok's stage 2) with the encoder and quantizer frozen.
_base_ = ['./marvel_rlfq-4k-x2_vit-tiny-k8_1xb8-300_skimage-64.py']
stage1_checkpoint = \
    'work_dirs/marvel_rlfq-4k-x2_vit-tiny-k8_1xb8-300_skimage-64/iter_300.pth'
model = dict(
    teacher=None,
    pixel_decoder={{_base_.teacher}},
    frozen_parts=('encoder', 'quantizer'),
    discriminator=dict(type='PatchGANDiscriminator', in_channels=3,
                       base_channels=32, num_layers=2, norm='batch'),
    adversarial_loss=dict(type='AdversarialLoss', loss_type='hinge',
                          generator_weight=0.01, adaptive_weight=False,
                          start_iter=100, lecam_weight=0.001,
                          lecam_decay=0.999, pixel_range=(0.0, 1.0)),
    pretrained=dict(
        stage1=dict(
            checkpoint=stage1_checkpoint,
            allow_missing=[r'pixel_.*', r'ema\..*', r'discriminator\..*',
                           r'adversarial_loss\..*'],
            allow_unexpected=[r'ema\..*']),
        pixel_parts=dict(
            checkpoint={{_base_.teacher_path}},
            prefix_map={'decoder.': 'pixel_decoder.',
                        'post_quant_conv.': 'pixel_post_quant_conv.',
                        'quantizer.codebook': 'pixel_codebook.weight'},
            select=[r'decoder\..*', r'post_quant_conv\..*',
                    r'quantizer\.codebook'],
            allow_missing=[r'(?!pixel_).*'])))
adam = dict(type='Adam', lr=1e-3, betas=(0.5, 0.9))
optim_wrapper = dict(
    _delete_=True,
    constructor='MultiPartOptimWrapperConstructor',
    generator=dict(type='OptimWrapper', optimizer=adam,
                   clip_grad=dict(max_norm=1.0)),
    discriminator=dict(type='OptimWrapper', optimizer=adam))
param_scheduler = dict(
    _delete_=True,
    generator=[dict(type='LinearLR', start_factor=0.1, by_epoch=False,
                    begin=0, end=50)],
    discriminator=[dict(type='ConstantLR', factor=1.0, by_epoch=False)])
