# ImageNet-1k at 256 px from an image folder (`data_root/train/<class>/*`,
# `data_root/val/<class>/*`; the standard extracted layout). Training: random
# resized crops and flips; evaluation: resize the short side to 256 and take
# the centre 256 crop (the rFID reference protocol of TiTok / LlamaGen).
data_root = 'data/imagenet'
image_size = 256

train_pipeline = [
    dict(type='RandomResizedCrop', size=image_size, scale=(0.8, 1.0)),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='ResizeShortEdge', size=image_size, interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=image_size),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=12,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='ResumableInfiniteSampler', shuffle=True),
    dataset=dict(type='ImageFolderDataset', data_root=data_root,
                 data_prefix=dict(img_path='train'),
                 pipeline=[dict(type='LoadImageRGB')] + train_pipeline))
val_dataloader = dict(
    batch_size=32,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ImageFolderDataset', data_root=data_root,
                 data_prefix=dict(img_path='val'), test_mode=True,
                 pipeline=[dict(type='LoadImageRGB')] + test_pipeline))
test_dataloader = val_dataloader
# rFID (+ IS) of the reconstructions against the 50k centre-cropped val
# images with pytorch-fid's Inception (what TiTok / MARVEL report); the real
# statistics are computed once and cached under the protocol fingerprint.
inception_weights_path = 'checkpoints/pt_inception-2015-12-05-6726825d.pth'
val_evaluator = [
    dict(type='PSNR'),
    dict(type='SSIM'),
    dict(type='CodebookUsage'),
    dict(type='FrechetInceptionDistance', metrics=('fid', 'is'),
         feature_extractor=dict(type='PytorchFIDInception',
                                weights_path=inception_weights_path),
         reference=dict(name='imagenet-val-256-center', num_images=50000),
         # long side int(256 * long / short) as torchvision's Resize(256):
         # a field of its own so statistics cached under the earlier
         # rounded rule are not reused
         protocol=dict(crop='resize-short-256-bicubic-center-256',
                       resize_filter='bicubic', file_format='JPEG',
                       long_side='truncated')),
]
test_evaluator = val_evaluator
