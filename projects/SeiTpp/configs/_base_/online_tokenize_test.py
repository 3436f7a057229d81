# Testing a token classifier on real images (SeiT evaluate_on_images.py):
# resize to 256 x 256 (bicubic), tokenise online with the SeiT tokenizer
# (TokenEmbeddingPreprocessor `tokenizer`: frozen, never in checkpoints),
# then the centre 28 x 28 of the 32 x 32 tokens. The tokenizer: the ViT-VQGAN
# config with SeiT's 391-code codebook, and its weights converted with
#   python tools/model_converters/vitvqgan.py tokenizer.ckpt \
#       data/seit/tokenizer.pth --config <tokenizer_config> \
#       --codebook data/seit/codebook.ckpt --trust-checkpoint
# (see configs/vitvqgan/README.md). The test configs read an image folder
# of class sub-folders named by ImageNet synset (`test_root`).
tokenizer_config = ('configs/vitvqgan/vitvqgan_vq-391-d32-l2_vit-b-p8_1xb8-'
                    '100e_in1k-256.py')
tokenizer_checkpoint = 'data/seit/tokenizer.pth'
online_test_pipeline = [
    dict(type='LoadImageRGB'),
    dict(type='Resize', scale=(256, 256), keep_ratio=False,
         interpolation='bicubic', backend='pillow'),
    dict(type='PackInputs'),
]
