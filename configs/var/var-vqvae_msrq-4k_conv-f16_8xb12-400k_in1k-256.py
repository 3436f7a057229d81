# VAR's multi-scale VQVAE tokenizer (Tian et al. 2024, "Visual
# Autoregressive Modeling"; FoundationVision/VAR models/vqvae.py, released
# as vae_ch160v4096z32.pth): taming's f16 conv encoder / decoder (VAR's
# hard-coded ddconfig, LDM's vq-f16: ch_mult 1,1,2,2,4, 2 ResnetBlocks per
# level, attention after every block of the 16 x 16 level and in the
# middle) at ch 160 with 32 latent channels, 3x3 quant_conv /
# post_quant_conv, and the multi-scale residual quantizer: scales 1..16
# (10 maps, 680 tokens), one 4096 x 32 codebook looked up by plain
# Euclidean distance (VectorQuantizer2(using_znorm=False)), 4 partially
# shared 3x3 Phi convs blending 0.5 (share_quant_resi=4, quant_resi=0.5),
# beta 0.25. 108,948,355 parameters (tested against the official layout).
# Test half: the released weights, converted with
# tools/model_converters/var_vqvae.py (the script's default config), e.g.
# to checkpoints/var_tokenizer_vistok.pth, the quantizer_weights of the VAR
# generator configs. Training half: VAR did not release its tokenizer's
# training code or hyper-parameters (the paper trains it on OpenImages with
# taming's compound loss); this inherits taming's f16 recipe (L1 + LPIPS +
# PatchGAN, Adam, 8 x 12 images, 400k iterations). See README.md.
_base_ = ['../vqgan/vqgan_vq-16k_conv-f16_8xb12-400k_in1k-256.py']
var_patch_nums = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
conv = dict(ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
            attn_resolutions=(16, ), resolution=256, z_channels=32,
            dropout=0.0, num_groups=32)
model = dict(
    encoder=dict(type='ConvEncoder', in_channels=3, **conv),
    quantizer=dict(
        _delete_=True,
        type='MultiScaleResidualQuantizer',
        scales=var_patch_nums,
        # stated, not left to a default: VAR's look-up is Euclidean
        quantizer=dict(type='VectorQuantizer', codebook_size=4096,
                       embed_dim=32, use_l2_norm=False),
        use_phi=True,
        num_phi=4,
        phi_ratio=0.5,
        phi_kernel_size=3,
        commitment_weight=0.25),
    decoder=dict(type='ConvDecoder', out_ch=3, **conv),
    quant_conv_kernel_size=3,
)
