# UniCode's tokenizer data: the LLaVA pre-training images (LCS-558K:
# LAION / CC / SBU) plus the ~300K images of LLaVA-mix-665K, under
# `data_root` as an image folder (any sub-folders; labels are not used).
# Training: RandomResizedCrop(256, scale 0.75-1, square) + flip, [-1, 1]
# (official src/vae data transforms); evaluation: resize the short side to
# 256 and take the centre crop.
data_root = 'data/llava_images'
image_size = 256
train_pipeline = [
    dict(type='LoadImageRGB'),
    dict(type='RandomResizedCrop', size=image_size, scale=(0.75, 1.0),
         ratio=(1.0, 1.0)),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageRGB'),
    dict(type='ResizeShortEdge', size=image_size, interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=image_size),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=48,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='ResumableInfiniteSampler', shuffle=True),
    dataset=dict(type='ImageFolderDataset', data_root=data_root,
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=32,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ImageFolderDataset', data_root=data_root,
                 pipeline=test_pipeline, test_mode=True,
                 indices=5000))
test_dataloader = val_dataloader
val_evaluator = [dict(type='PSNR'), dict(type='CodebookUsage')]
test_evaluator = val_evaluator
