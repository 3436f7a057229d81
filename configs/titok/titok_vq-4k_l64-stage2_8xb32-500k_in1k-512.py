# TiTok-L-64 at 512 x 512, stage 2 (paper Table 2: rFID 1.77; "644M"
# tokenizer); 642,725,903 parameters (meta device; stage 1 plus the
# MaskGIT-VQGAN decoder and codebook, without the discriminator's 1,909,889
# and the EMA copy, counted as the 256 stage-2 configs are).
#
# The TiTok-L-32 stage-2 config (./titok_vq-4k_l32-stage2_8xb32-500k_in1k-
# 256.py) with 64 latent tokens and everything that has a resolution at 512,
# as in ./titok_vq-4k_l64_8xb32-1m_in1k-512.py (see there what is inferred):
# img_size, TiTok's augmentation and the evaluation at 512; the pixel decoder
# (initialised from the teacher, as in TiTok) is MaskGIT's ImageNet-512
# VQGAN's. Starts from the TiTok-L-64 512 stage-1 checkpoint.
_base_ = ['./titok_vq-4k_l32-stage2_8xb32-500k_in1k-256.py']
teacher_path = 'checkpoints/maskgit-vqgan-imagenet-f16-512_vistok.pth'
stage1_checkpoint = \
    'work_dirs/titok_vq-4k_l64_8xb32-1m_in1k-512/iter_1000000.pth'
num_latent_tokens, image_size = 64, 512
model = dict(
    encoder=dict(num_latent_tokens=num_latent_tokens, img_size=image_size),
    decoder=dict(num_latent_tokens=num_latent_tokens, img_size=image_size),
    # nominal size only (no attention in MaskGIT's VQGAN)
    pixel_decoder=dict(encoder=dict(resolution=image_size),
                       decoder=dict(resolution=image_size)),
    teacher_path=teacher_path,
    pretrained=dict(stage1=dict(checkpoint=stage1_checkpoint),
                    pixel_parts=dict(checkpoint=teacher_path)))
train_pipeline = [
    dict(type='ResizeShortEdge', size=image_size, interpolation='bicubic'),
    dict(type='RandomCrop', size=image_size),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='ResizeShortEdge', size=image_size, interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=image_size),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(
    pipeline=[dict(type='LoadImageRGB')] + train_pipeline))
val_dataloader = dict(dataset=dict(
    pipeline=[dict(type='LoadImageRGB')] + test_pipeline))
test_dataloader = val_dataloader
# rFID against the 50k val images at 512 (resize-short-512, centre 512)
val_evaluator = [
    dict(metric,
         reference=dict(metric['reference'], name='imagenet-val-512-center'),
         protocol=dict(metric['protocol'],
                       crop='resize-short-512-bicubic-center-512'))
    if metric['type'] == 'FrechetInceptionDistance' else metric
    for metric in _base_.val_evaluator
]
test_evaluator = val_evaluator
