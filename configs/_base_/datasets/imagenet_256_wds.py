# ImageNet-1k at 256 px from webdataset tar shards (what TiTok / MARVEL train
# on). Same pipelines and evaluator as imagenet_256.py; only the storage
# differs. Write the shards once (originals, not re-encoded; see the tool's
# docstring):
#   python tools/dataset_converters/imagenet_to_wds.py data/imagenet \
#       data/imagenet-wds --split train --workers 8
#   python tools/dataset_converters/imagenet_to_wds.py data/imagenet \
#       data/imagenet-wds --split val [--val-labels LOC_val_solution.csv]
# The tool prints the `urls` pattern and `num_samples` below (1,001 train
# shards with the default --shard-size 1281; update train_urls for another).
#
# rFID protocol (TiTok / MARVEL): all 50,000 val images, short side resized
# to 256 (PIL bicubic, antialiased) and centre-cropped to 256 x 256;
# reconstructions rounded to uint8; features of pytorch-fid's Inception
# (pt_inception-2015-12-05). The reference statistics are those of the SAME
# centre-cropped 256 inputs the tokenizer reconstructs (the test pipeline's
# gt_img), never of full-size or differently resized val images: mixing the
# two measures the preprocessing gap, not the reconstruction (the protocol
# trap of TiTok issue #105 / D-AR issue #3).
#
# Training streams the shards (WebDatasetShards, an IterableDataset: no
# sampler). Evaluation reads the val shards map-style (TarShardDataset)
# under DefaultSampler, so that mmengine's collect_results returns every val
# image exactly once for any number of ranks (see vistok/datasets/
# tar_shards.py).
_base_ = ['./imagenet_256.py']

wds_root = 'data/imagenet-wds'
train_urls = wds_root + '/imagenet-train-{000000..001000}.tar'
train_num_samples = 1281167

train_dataloader = dict(
    sampler=None,
    dataset=dict(
        _delete_=True,
        type='WebDatasetShards',
        urls=train_urls,
        num_samples=train_num_samples,
        repeat=True,
        shuffle=True,
        pipeline={{_base_.train_pipeline}}))
val_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='TarShardDataset',
        data_root=wds_root,
        manifest='manifest-val.json',
        test_mode=True,
        pipeline={{_base_.test_pipeline}}))
test_dataloader = val_dataloader
