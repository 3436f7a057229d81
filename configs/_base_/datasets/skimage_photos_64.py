# Real photos shipped inside scikit-image (no download), random 64x64 crops
# for training and centre crops of the resized photos for evaluation.
image_size = 64

train_pipeline = [
    dict(type='RandomResizedCrop', size=image_size, scale=(0.08, 1.0)),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=False),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    sampler=dict(type='ResumableInfiniteSampler', shuffle=True),
    dataset=dict(type='SkimagePhotoDataset', repeat=64,
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='SkimagePhotoDataset', repeat=1,
                 pipeline=test_pipeline, test_mode=True))
test_dataloader = val_dataloader

val_evaluator = [dict(type='PSNR'), dict(type='CodebookUsage')]
test_evaluator = val_evaluator
