# Robustness row of paper_tables.md 2.4: ImageNet-C Gaussian blur (SeiT 62.6, SeiT++ w/o MTM 66.8).
# Test only: python tools/test.py <this> CHECKPOINT (a checkpoint of
# ../seit_vitvq-391_vit-b_8xb128-300e_in1k-tok32.py).
# ImageNet-C severity 3 here; the paper does not say which it used (the
# usual protocol averages severities 1-5:
# --cfg-options test_dataloader.dataset.data_root=...).
_base_ = ['../seit_vitvq-391_vit-b_8xb128-300e_in1k-tok32.py',
          '../_base_/online_tokenize_test.py']
test_root = 'data/imagenet-c/gaussian_blur/3'
model = dict(data_preprocessor=dict(tokenizer=dict(
    config={{_base_.tokenizer_config}},
    checkpoint={{_base_.tokenizer_checkpoint}})))
test_dataloader = dict(
    batch_size=64,
    dataset=dict(_delete_=True, type='ImageFolderDataset',
                 data_root=test_root,
                 pipeline={{_base_.online_test_pipeline}}, test_mode=True))
