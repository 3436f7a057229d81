# Training TokenAdapt's f and g (SeiT++ 3.2), which the official code never
# released: from ImageNet images x (256 x 256) a frozen SeiT tokenizer makes
# T_x and T_A(x) for a per-sample draw of A (the flip / affine family
# TokenAdapt applies downstream, then a RandomResizedCrop box of scale
# 0.2-1 resized to 224 px: a 28 x 28 token grid); the loss is the
# cross-entropy of g(A(f(codebook[T_x]))) against T_A(x), with the same
# relative A at 64 -> 56 in f-space. INFERRED (not published): this pairing,
# the optimiser (AdamW lr 1e-4 x batch / 256, wd 0.05), 30 epochs, 1 warm-up
# epoch, cosine. The result is what `token_adapt_checkpoint` of the SeiT++
# configs loads (or convert the released tokenadapt.ckpt with
# projects/SeiTpp/tools/convert_tokenadapt.py).
_base_ = ['../../../configs/_base_/default_runtime.py',
          '../../../configs/_base_/datasets/imagenet_256.py']
custom_imports = dict(imports=['projects.SeiTpp.seitpp'],
                      allow_failed_imports=False)
tokenizer_config = ('configs/vitvqgan/vitvqgan_vq-391-d32-l2_vit-b-p8_1xb8-'
                    '100e_in1k-256.py')
tokenizer_checkpoint = 'data/seit/tokenizer.pth'
model = dict(
    type='TokenAdaptTrainer',
    token_adapt=dict(type='TokenAdapt', num_codes=391, code_dim=32),
    tokenizer=dict(config=tokenizer_config, checkpoint=tokenizer_checkpoint),
    crop_fraction=224 / 256,
    augment=dict(flip_prob=0.5, affine_prob=0.5, op_prob=0.5,
                 rotate=(-30.0, 30.0), translate=(0.2, 0.2),
                 shear_x=(0.0, 15.0), shear_y=(0.0, 15.0),
                 scale=(0.2, 1.0)),
    data_preprocessor=dict(type='ImgDataPreprocessor'))
# the images themselves at 256 x 256 (bicubic, as SeiT tokenises them); A is
# drawn in the model, identically for the pixels and the f-space map
train_dataloader = dict(
    batch_size=64,
    dataset=dict(pipeline=[
        dict(type='LoadImageRGB'),
        dict(type='Resize', scale=(256, 256), keep_ratio=False,
             interpolation='bicubic', backend='pillow'),
        dict(type='PackInputs'),
    ]))
val_dataloader = val_cfg = val_evaluator = None
test_dataloader = test_cfg = test_evaluator = None
iters_per_epoch = 1281167 // (8 * 64)
max_iters = 30 * iters_per_epoch
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999),
                   weight_decay=0.05))
auto_scale_lr = dict(base_batch_size=256, rule='linear', enable=True)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0,
         end=iters_per_epoch),
    dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=False,
         begin=iters_per_epoch, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
default_hooks = dict(checkpoint=dict(interval=iters_per_epoch))
