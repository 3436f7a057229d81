# MARVEL-L-32 stage 2 (README: rFID 2.21, the TiTok-L-32 number): TiTok's
# stage-2 recipe (configs/titok/titok_vq-4k_l32-stage2_8xb32-500k_in1k-256.py: encoder and quantizer frozen, L2 +
# 0.1 x ConvNeXt-S logits + MaskGIT GAN at 0.01 from 20k with LeCam 0.001,
# EMA) on the MARVEL stage-1 model, except that the pixel decoder and
# codebook come from the released TiTok-L-32 (already fine-tuned; converted
# with tools/model_converters/titok.py) instead of the raw MaskGIT-VQGAN,
# and gradients accumulate over 2 x 32 images per GPU.
_base_ = [
    '../../../configs/titok/titok_vq-4k_l32-stage2_8xb32-500k_in1k-256.py',
    './_base_/marvel_quantizer.py'
]
depth = 1
stage1_checkpoint = \
    'work_dirs/marvel_rlfq-4k-x1_l32_8xb64-40k_in1k-256/iter_40000.pth'
titok_release = 'checkpoints/tokenizer_titok_l32_imagenet_vistok.pth'
model = dict(
    quantizer={{_base_.marvel_quantizer}},
    pretrained=dict(
        stage1=dict(checkpoint=stage1_checkpoint),
        # only the pixel parts of the release
        pixel_parts=dict(_delete_=True,
                         checkpoint=titok_release,
                         select=[r'pixel_.*'],
                         allow_missing=[r'(?!pixel_).*'])))
optim_wrapper = dict(generator=dict(accumulative_counts=2),
                     discriminator=dict(accumulative_counts=2))
