# Robustness row of paper_tables.md 2.4: ImageNet-R (SeiT 25.5, SeiT++ w/o MTM 30.2).
# Test only: python tools/test.py <this> CHECKPOINT (a checkpoint of
# ../seitpp-scratch_vitvq-391_vit-b_8xb128-300e_in1k-tok32.py).
_base_ = ['../seitpp-scratch_vitvq-391_vit-b_8xb128-300e_in1k-tok32.py',
          '../_base_/online_tokenize_test.py']
test_root = 'data/imagenet-r'
model = dict(data_preprocessor=dict(tokenizer=dict(
    config={{_base_.tokenizer_config}},
    checkpoint={{_base_.tokenizer_checkpoint}})))
test_dataloader = dict(
    batch_size=64,
    dataset=dict(_delete_=True, type='ImageFolderDataset',
                 data_root=test_root,
                 pipeline={{_base_.online_test_pipeline}}, test_mode=True))
# its 200 ImageNet-1k classes: scores restricted to them (Accuracy class_subset)
class_names = 'data/imagenet/LOC_synset_mapping.txt'
test_evaluator = dict(
    type='Accuracy', topk=(1, 5),
    class_subset='projects/SeiTpp/configs/_base_/imagenet_r_classes.txt',
    class_names=class_names)
