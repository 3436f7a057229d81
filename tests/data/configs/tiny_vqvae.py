# A tiny, fast variant of the demo tokenizer for engine / tool tests. It has
# dropout and random augmentation so exact-resume tests can fail.
_base_ = ['../../../configs/vqvae/vqvae_vq-512_conv-f4_1xb8-2k_shapes-64.py']

image_size = 32
model = dict(
    encoder=dict(ch=8, ch_mult=(1, 2), resolution=32, z_channels=8,
                 dropout=0.1, num_groups=4),
    quantizer=dict(codebook_size=64, embed_dim=8),
    decoder=dict(ch=8, ch_mult=(1, 2), resolution=32, z_channels=8,
                 dropout=0.1, num_groups=4))
train_pipeline = [
    dict(type='RandomResizedCrop', size=image_size, scale=(0.3, 1.0)),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=4,
    dataset=dict(num_samples=64, image_size=48, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, dataset=dict(num_samples=16, image_size=image_size))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=12, val_interval=6)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False,
                        begin=0, end=5)]
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval=4, max_keep_ckpts=2))
log_processor = dict(window_size=1)
# no run summary sheet (about 1 s of matplotlib per run); tests that want
# it add RunSummaryHook (tests/test_engine/test_summary_hook.py)
custom_hooks = []
