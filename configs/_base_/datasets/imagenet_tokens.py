# Class-conditional token pre-training on ImageNet-1k tokens exported with
# tools/export_tokens.py (webdataset shards + manifest; the manifest's
# tokenizer hash travels with the data). Set `token_root` to the export dir.
token_root = 'data/tokens/imagenet-train'
train_dataloader = dict(
    batch_size=32,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='ResumableInfiniteSampler', shuffle=True),
    dataset=dict(type='TokenShardDataset', data_root=token_root))
# generation quality (gFID) is measured with tools/sample.py, not in the
# training loop
val_dataloader = val_cfg = val_evaluator = None
test_dataloader = test_cfg = test_evaluator = None
