# UniCode's HQ-VAE in miniature on CPU, on the photos shipped with
# scikit-image (64 px -> 16x16 bottom / 8x8 top = 320 ids): the recipe of the
# paper configs (HQ concat, shared codebook mixed with the LLM table,
# CodebookMixHook with a frozen tail, PatchGAN hinge x (1 - 0.9 lambda),
# MSE; no LPIPS: its VGG16 trunk is a download) at small widths, with a tiny
# random Llama as the LLM (hidden 64, 1,024-token vocabulary; write it with
#   python projects/UniCode/tools/make_tiny_llm.py work_dirs/unicode_tiny/llm
# ) and its 256 lowest-norm tokens as the visual vocabulary.
_base_ = ['../../../../configs/_base_/datasets/skimage_photos_64.py',
          '../../../../configs/_base_/default_runtime.py']
custom_imports = dict(imports=['projects.UniCode.unicode'],
                      allow_failed_imports=False)
llm_path = 'work_dirs/unicode_tiny/llm'
llm_hidden, num_codes = 64, 256
conv = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
            attn_resolutions=(), resolution=64, z_channels=32, dropout=0.0,
            num_groups=8)
codebook = dict(type='VectorQuantizer', codebook_size=num_codes,
                embed_dim=llm_hidden, ema_decay=0.99, ema_eps=1e-5,
                commitment_weight=0.25, external_codebook_path=llm_path,
                external_codebook_key='model.embed_tokens.weight',
                external_num_codes=num_codes,
                external_codebook_in_checkpoint=False, mix_mode='unicode',
                latent_norm_stat='sample')
model = dict(
    type='AutoencoderTokenizer',
    data_preprocessor=dict(type='ImagePreprocessor', mean=[127.5] * 3,
                           std=[127.5] * 3),
    encoder=dict(type='ConvEncoder', in_channels=3, **conv),
    quantizer=dict(type='HierarchicalQuantizer', top_quantizer=codebook,
                   shared_codebook=True, token_order='interleaved',
                   combine='concat'),
    decoder=dict(type='ConvDecoder', out_ch=3, **conv),
    reconstruction_loss=dict(type='MSELoss', loss_weight=1.0),
    discriminator=dict(type='PatchGANDiscriminator', in_channels=3,
                       base_channels=16, num_layers=2, norm='batch'),
    adversarial_loss=dict(type='AdversarialLoss', loss_type='hinge',
                          generator_weight=0.75, adaptive_weight=True,
                          adaptive_weight_max=500.0, start_iter=0),
    last_layer='decoder.conv_out.weight',
)
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
