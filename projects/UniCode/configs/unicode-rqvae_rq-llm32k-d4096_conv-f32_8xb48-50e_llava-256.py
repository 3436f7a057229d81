# UniCode RQ-VAE (official RQGenerator, type 'rqvae'): the encoder one level
# deeper (256 px -> 8x8, attention at 8x8), one shared EMA codebook applied
# 4 times on the running residual (4 x 64 = 256 ids per image), the latent's
# norm capped once before the depths, commitment averaged over the depths,
# decode = the sum of the depths. Same recipe as the HQ-VAE config.
_base_ = ['./unicode-hqvae_hq-llm32k-d4096_conv-f16_8xb48-50e_llava-256.py']
conv = dict(ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
            attn_resolutions=(8, ), resolution=256, z_channels=256,
            dropout=0.0, num_groups=32)
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
                       external_codebook_in_checkpoint=False,
                       mix_mode='unicode', latent_norm_stat='sample',
                       cap_latent_norm=False)))
