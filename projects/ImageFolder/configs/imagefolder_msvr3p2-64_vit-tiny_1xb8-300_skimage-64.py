# ImageFolder at CPU-demo scale on the photos shipped with scikit-image (no
# download): random-initialised tiny timm ViTs (width 64, 2 heads, 2 blocks) as
# latent-grid encoder / decoder at 64 px with 8 px patches, 2 branches of
# 4 x 4 latent tokens, the tiny MSVR quantizer (_base_/tiny_quantizer.py),
# L2 + PatchGAN hinge (adaptive weight x 0.5, from iteration 150) + the
# semantic InfoNCE on the last branch against a frozen tiny ViT (a random
# stand-in: write it first with
#   python projects/ImageFolder/tools/random_vit_weights.py \
#       vit_tiny_patch16_224 work_dirs/imagefolder_tiny/teacher.pth \
#       --img-size 64 --patch-size 8 --depth 2 --embed-dim 64 --num-heads 2
# ), EMA, 300 iterations of Adam; codebook usage logged per scale and branch.
_base_ = [
    '../../../configs/_base_/datasets/skimage_photos_64.py',
    '../../../configs/_base_/schedules/adam_2k.py',
    '../../../configs/_base_/default_runtime.py',
    './_base_/tiny_quantizer.py',
]
custom_imports = dict(imports=['projects.ImageFolder.imagefolder'],
                      allow_failed_imports=False)
teacher_path = 'work_dirs/imagefolder_tiny/teacher.pth'
vit_kwargs = dict(img_size=64, patch_size=8, depth=2, embed_dim=64,
                  num_heads=2)
vit = dict(model_name='vit_tiny_patch16_224', model_kwargs=vit_kwargs,
           latent_grid_size=4, num_branches={{_base_.num_branches}},
           code_dim={{_base_.code_dim}})
model = dict(
    type='ImageFolderTokenizer',
    encoder=dict(type='DINOv2LatentEncoder', **vit),
    quantizer={{_base_.quantizer}},
    decoder=dict(type='DINOv2PixelDecoder', **vit),
    semantic_loss=dict(
        type='SemanticRegularizationLoss',
        num_branches={{_base_.num_branches}},
        branch_channels={{_base_.code_dim}},
        target=-1,
        teacher=dict(model_name='vit_tiny_patch16_224',
                     model_kwargs=vit_kwargs),
        teacher_weights_path=teacher_path,
        loss_weight=0.1),
    reconstruction_loss=dict(type='MSELoss', loss_weight=1.0),
    discriminator=dict(type='PatchGANDiscriminator', in_channels=3,
                       base_channels=16, num_layers=2, norm='group',
                       num_groups=4),
    adversarial_loss=dict(type='AdversarialLoss', loss_type='hinge',
                          generator_weight=0.5, adaptive_weight=True,
                          start_iter=150),
    ema=dict(decay=0.99, use_for_val=True),
)
adam = dict(type='Adam', lr=1e-3, betas=(0.5, 0.9))
optim_wrapper = dict(
    _delete_=True,
    constructor='MultiPartOptimWrapperConstructor',
    generator=dict(type='OptimWrapper', optimizer=adam),
    discriminator=dict(type='OptimWrapper', optimizer=adam))
param_scheduler = None
train_cfg = dict(max_iters=300, val_interval=300)
default_hooks = dict(checkpoint=dict(interval=300))
custom_hooks = [dict(type='CodebookUsageHook', interval=50)]
