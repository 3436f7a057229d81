# UniCode's HQ-VAE tokenizer (Zheng et al., ECCV 2024; official
# src/vae/models/stage1/generator.py SimRQGAN2Generator, quantizer.py
# EMAVectorQuantizer): taming conv encoder / decoder (ch 128, ch_mult
# 1,1,2,2,4, attention at 16x16, z 256: 256 px -> 16x16), quant_conv to
# C = E/4 channels, PixelUnshuffle(2) -> the E-channel top map at 8x8,
# bottom = h_b - PixelShuffle(q_top) through 1x1 up / down convs at 16x16,
# decode concat(PixelShuffle(q_top), q_bottom) (2C channels) -> post_quant_conv.
# E = 4096 = the LLM's hidden size: the codes ARE LLaMA-2 / Vicuna-7B token
# embeddings. Both levels use one codebook (shared_codebook: every one of
# the 64 + 256 = 320 ids is an LLM vocabulary id).
# Codebook: EMA (decay 0.99, eps 1e-5, commitment 0.25 on top + bottom),
# language-driven mixing with the LLM table (mix_mode='unicode': norm
# matched, latent mean norm capped at 30, per-sample statistic so ids do not
# depend on batch-mates; the official batch mean is latent_norm_stat=
# 'batch'); the table is read from the local LLM folder and kept out of
# checkpoints (its sha256 and the selected vocabulary ids are stored).
# Losses: MSE + LPIPS 1.0, PatchGAN (2 layers, BatchNorm) hinge with the
# adaptive weight clamped at 500 x 0.75 x (1 - 0.9 lambda) (the lambda factor
# comes from CodebookMixHook).
llm_path = 'checkpoints/vicuna-7b-v1.5'  # local HF folder (safetensors)
llm_hidden = 4096
num_codes = 32000  # the full vocabulary; the subset configs override it
lpips_trunk_path = 'checkpoints/vgg16-397923af.pth'
conv = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
            attn_resolutions=(16, ), resolution=256, z_channels=256,
            dropout=0.0, num_groups=32)
codebook = dict(type='VectorQuantizer', codebook_size=num_codes,
                embed_dim=llm_hidden, ema_decay=0.99, ema_eps=1e-5,
                commitment_weight=0.25, external_codebook_path=llm_path,
                external_codebook_key='model.embed_tokens.weight',
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
    perceptual_loss=dict(type='LPIPS', trunk_path=lpips_trunk_path,
                         loss_weight=1.0),
    discriminator=dict(type='PatchGANDiscriminator', in_channels=3,
                       base_channels=64, num_layers=2, norm='batch'),
    adversarial_loss=dict(type='AdversarialLoss', loss_type='hinge',
                          generator_weight=0.75, adaptive_weight=True,
                          adaptive_weight_max=500.0, discriminator_weight=1.0,
                          start_iter=0),
    last_layer='decoder.conv_out.weight',
)
