# The same tokenizer on the real photos shipped with scikit-image.
_base_ = [
    '../_base_/models/vqvae_conv-f4.py',
    '../_base_/datasets/skimage_photos_64.py',
    '../_base_/schedules/adam_2k.py',
    '../_base_/default_runtime.py',
]
