# CPU demo of single-stage training: the tiny MARVEL tokenizer with a pixel
# head (1x1 conv to 4 x 4 x 3 values per patch, unpatchify, 3x3 conv) trained
# directly on pixels with L2 — no teacher, no proxy codes.
_base_ = ['./marvel_rlfq-4k-x2_vit-tiny-k8_1xb8-300_skimage-64.py']
model = dict(head='pixel', teacher=None)
