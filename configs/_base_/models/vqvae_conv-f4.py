# A small VQ-VAE: taming-style conv encoder (downsampling factor 4) ->
# l2-normalised vector quantizer -> conv decoder, L1 reconstruction loss.
model = dict(
    type='AutoencoderTokenizer',
    data_preprocessor=dict(type='ImagePreprocessor', mean=[127.5] * 3,
                           std=[127.5] * 3),
    encoder=dict(type='ConvEncoder', in_channels=3, ch=16, ch_mult=(1, 2, 2),
                 num_res_blocks=1, attn_resolutions=(), resolution=64,
                 z_channels=32, dropout=0.0, num_groups=8),
    quantizer=dict(type='VectorQuantizer', codebook_size=512, embed_dim=32,
                   use_l2_norm=True, commitment_weight=0.25),
    decoder=dict(type='ConvDecoder', out_ch=3, ch=16, ch_mult=(1, 2, 2),
                 num_res_blocks=1, attn_resolutions=(), resolution=64,
                 z_channels=32, dropout=0.0, num_groups=8),
    reconstruction_loss=dict(type='L1Loss', loss_weight=1.0),
)
