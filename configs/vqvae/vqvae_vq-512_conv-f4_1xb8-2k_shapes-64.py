# The demo tokenizer: trains on the embedded procedural dataset (no download).
_base_ = [
    '../_base_/models/vqvae_conv-f4.py',
    '../_base_/datasets/procedural_shapes_64.py',
    '../_base_/schedules/adam_2k.py',
    '../_base_/default_runtime.py',
]
# at the end of training: work_dir/summary.png (curves, reconstructions,
# codebook usage) and the data it shows (summary.npz)
custom_hooks = [dict(type='RunSummaryHook')]
