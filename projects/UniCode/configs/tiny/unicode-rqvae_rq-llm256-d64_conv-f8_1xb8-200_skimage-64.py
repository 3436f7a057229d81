# UniCode's RQ-VAE in miniature (see the tiny HQ-VAE config): one level
# deeper (64 px -> 8x8), one codebook shared by 4 residual depths (256 ids),
# the latent's norm capped once before the depths.
_base_ = ['./unicode-hqvae_hq-llm256-d64_conv-f4_1xb8-200_skimage-64.py']
conv = dict(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1,
            attn_resolutions=(), resolution=64, z_channels=32, dropout=0.0,
            num_groups=8)
model = dict(
    encoder=dict(_delete_=True, type='ConvEncoder', in_channels=3, **conv),
    decoder=dict(_delete_=True, type='ConvDecoder', out_ch=3, **conv),
    quantizer=dict(
        _delete_=True, type='ResidualQuantizer', depth=4,
        shared_codebook=True, depth_loss_reduction='mean',
        quantizer=dict(type='VectorQuantizer',
                       codebook_size={{_base_.num_codes}},
                       embed_dim={{_base_.llm_hidden}}, ema_decay=0.99,
                       ema_eps=1e-5, commitment_weight=0.25,
                       external_codebook_path={{_base_.llm_path}},
                       external_codebook_key='model.embed_tokens.weight',
                       external_num_codes={{_base_.num_codes}},
                       external_codebook_in_checkpoint=False,
                       mix_mode='unicode', latent_norm_stat='sample',
                       cap_latent_norm=False)))
