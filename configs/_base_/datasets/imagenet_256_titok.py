# ImageNet-1k at 256 px with TiTok's training augmentation (bytedance/
# 1d-tokenizer data/webdataset_reader.py ImageTransform at commit 942a96fb;
# configs/training/TiTok/stage*/titok_*.yaml: resize_shorter_edge 256,
# crop_size 256, random_crop and random_flip True; MDQ keeps it): torchvision
# Resize(256, BICUBIC, antialias=True) on the PIL image -> RandomCrop(256) ->
# RandomHorizontalFlip(0.5) -> ToTensor (pixels in [0, 1]). Here: the same
# resize (ResizeShortEdge, PIL bicubic, torchvision's size rule), a uniform
# crop offset and a flip drawn per sample from the draw's seed
# (ResumableInfiniteSampler), uint8 packed; the [0, 1] range is the model's
# pixel_range. Evaluation is imagenet_256.py's (the same resize, centre
# crop), which is also TiTok's eval_transform.
_base_ = ['./imagenet_256.py']
image_size = 256
train_pipeline = [
    dict(type='ResizeShortEdge', size=image_size, interpolation='bicubic'),
    dict(type='RandomCrop', size=image_size),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(
    pipeline=[dict(type='LoadImageRGB')] + train_pipeline))
