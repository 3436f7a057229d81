# The embedded procedural dataset (no download): 64x64 RGB shapes.
# Images reach the model as CHW uint8 RGB tensors (PackInputs); the model's
# data_preprocessor maps them to [-1, 1].
image_size = 64

train_pipeline = [
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='PackInputs')]

train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='ResumableInfiniteSampler', shuffle=True),
    dataset=dict(type='ProceduralShapesDataset', num_samples=4096,
                 image_size=image_size, seed=0, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ProceduralShapesDataset', num_samples=256,
                 image_size=image_size, seed=1, pipeline=test_pipeline,
                 test_mode=True))
test_dataloader = val_dataloader

val_evaluator = [dict(type='PSNR'), dict(type='CodebookUsage')]
test_evaluator = val_evaluator
