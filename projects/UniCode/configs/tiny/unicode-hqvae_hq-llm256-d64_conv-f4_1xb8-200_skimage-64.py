# UniCode's HQ-VAE in miniature on CPU, on the photos shipped with
# scikit-image (64 px -> 16x16 bottom / 8x8 top = 320 ids): the recipe of the
# paper configs (HQ concat, shared codebook mixed with the LLM table,
# CodebookMixHook with a frozen tail, PatchGAN hinge x (1 - 0.9 lambda),
# MSE; no LPIPS: its VGG16 trunk is a download) at small widths, with a tiny
# random Llama as the LLM (hidden 64, 1,024-token vocabulary; write it with
#   python projects/UniCode/tools/make_tiny_llm.py work_dirs/unicode_tiny/llm
# ) and its 256 lowest-norm tokens as the visual vocabulary.
_base_ = ['../_base_/unicode_hqvae.py',
          '../../../../configs/_base_/datasets/skimage_photos_64.py',
          '../../../../configs/_base_/default_runtime.py']
custom_imports = dict(imports=['projects.UniCode.unicode'],
                      allow_failed_imports=False)
llm_path = 'work_dirs/unicode_tiny/llm'
llm_hidden, num_codes = 64, 256
conv = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
            attn_resolutions=(), resolution=64, z_channels=32, dropout=0.0,
            num_groups=8)
model = dict(
    encoder=dict(_delete_=True, type='ConvEncoder', in_channels=3, **conv),
    decoder=dict(_delete_=True, type='ConvDecoder', out_ch=3, **conv),
    quantizer=dict(top_quantizer=dict(
        codebook_size=num_codes, embed_dim=llm_hidden,
        external_codebook_path=llm_path, external_num_codes=num_codes)),
    perceptual_loss=None,
    discriminator=dict(base_channels=16))
max_iters, tail_iters = 200, 50
lr = 1e-3
optim_wrapper = dict(
    constructor='MultiPartOptimWrapperConstructor',
    generator=dict(type='OptimWrapper', clip_grad=dict(max_norm=1.0),
                   optimizer=dict(type='Adam', lr=lr, betas=(0.5, 0.9))),
    discriminator=dict(type='OptimWrapper', clip_grad=dict(max_norm=1.0),
                       optimizer=dict(type='Adam', lr=lr,
                                      betas=(0.5, 0.9))))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(logger=dict(interval=50),
                     checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
custom_hooks = [
    dict(type='CodebookMixHook', tail_iters=tail_iters,
         adversarial_scale=(1.0, -0.9)),
]
