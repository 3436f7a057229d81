# ImageNet-1k stored as SeiT's released tokens (naver-ai/seit GitHub
# releases: 32 x 32 codes of a 391-code ViT-VQGAN per image, ~1.4 GB for the
# train split). Put the files under `seit_root` (or convert your own export:
# tools/export_tokens.py --format seit, tools/convert_tokens.py):
#   imagenet1k-{train,val}-token.data.bin.gz  (+ .index.npy.gz)
#   imagenet1k-{train,val}-label.txt, codebook.ckpt, codebook-synonyms.json
#   (build the synonyms with projects/SeiTpp/tools/build_synonyms.py)
# The SeiT tokens are read into memory once per process (as SeiT does);
# `tools/convert_tokens.py ... --to compact` and CompactTokenDataset read a
# memory-mapped file instead.
seit_root = 'data/seit'
codebook_file = f'{seit_root}/codebook.ckpt'
synonyms_file = f'{seit_root}/codebook-synonyms.json'
token_adapt_checkpoint = f'{seit_root}/tokenadapt.pth'
num_classes = 1000

train_dataloader = dict(
    batch_size=128,
    num_workers=8,
    persistent_workers=True,
    drop_last=True,
    sampler=dict(type='ResumableInfiniteSampler', shuffle=True),
    dataset=dict(
        type='SeiTTokenDataset',
        token_file=f'{seit_root}/imagenet1k-train-token.data.bin.gz',
        label_file=f'{seit_root}/imagenet1k-train-label.txt',
        grid=(32, 32)))
val_dataloader = dict(
    batch_size=256,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='SeiTTokenDataset',
        token_file=f'{seit_root}/imagenet1k-val-token.data.bin.gz',
        label_file=f'{seit_root}/imagenet1k-val-label.txt',
        grid=(32, 32)))
test_dataloader = val_dataloader
# evaluation: the centre 28 x 28 of the stored 32 x 32 tokens (SeiT's CC)
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_evaluator = val_evaluator
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
