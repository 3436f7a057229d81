# TiTok-L-64 at 512 x 512, stage 1 (paper Table 2: rFID 1.77, gFID 2.74 after
# stage 2; "644M" tokenizer); 611,985,420 parameters without the teacher
# (meta device).
#
# The 256 primitive (./titok_vq-4k_l32_8xb32-1m_in1k-256.py) with 64 latent
# tokens and everything that has a resolution at 512: encoder / decoder
# img_size (32 x 32 patches of 16), TiTok's augmentation at 512 (resize the
# short side to 512, bicubic, antialiased -> RandomCrop(512) -> flip), the
# evaluation's resize-short-512 + centre-512 crop and the rFID reference
# statistics of the 512 val set under that protocol, and the teacher at 512.
# Inferred, not in the official repository (bytedance/1d-tokenizer at commit
# 942a96fb has no 512 config and no 512 teacher file): the proxy codes of a
# 512 image are the 32 x 32 codes of MaskGIT's ImageNet-512 VQGAN (the JAX
# release tokenizer_imagenet512_checkpoint, the same f16 architecture and
# 1024 codes; the "MaskGIT-VQGAN 1024 tokens, rFID 1.97" row of the paper's
# Table 2), converted as the 256 one is (configs/maskgit_vqgan/README.md);
# the schedule, batch and optimizer are the 256 recipe's.
_base_ = ['./titok_vq-4k_l32_8xb32-1m_in1k-256.py']
teacher_path = 'checkpoints/maskgit-vqgan-imagenet-f16-512_vistok.pth'
num_latent_tokens, image_size = 64, 512
model = dict(
    encoder=dict(num_latent_tokens=num_latent_tokens, img_size=image_size),
    decoder=dict(num_latent_tokens=num_latent_tokens, img_size=image_size),
    # nominal size only (no attention in MaskGIT's VQGAN): documents the
    # teacher's 512 input
    teacher=dict(encoder=dict(resolution=image_size),
                 decoder=dict(resolution=image_size)),
    teacher_path=teacher_path)
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
