# MaskGIT's VQGAN (Chang et al. 2022, "MaskGIT: Masked Generative Image
# Transformer"; JAX maskgit/nets/vqgan_tokenizer.py, PyTorch port in open-muse
# and TiTok, modeling/modules/maskgit_vqgan.py), the frozen proxy-code teacher
# of TiTok: taming's conv encoder / decoder without attention blocks. ch 128,
# ch_mult (1, 1, 2, 2, 4), 2 ResnetBlocks per level in both halves and in the
# middle, bias-free ResnetBlock convs whose 1x1 shortcut reads the block
# output, 2x2 average-pool downsampling, bias-free encoder conv_in, 1x1
# encoder conv_out, plain VQ 1024 x 256 and no 1x1 convs around it.
# 54,515,587 parameters: encoder 23,775,104, decoder 30,478,339, codebook
# 262,144. The released weights see images in [0, 1]: pixel_range maps
# vistok's [-1, 1] onto that range (encoder input, decoder output).
conv = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
            attn_resolutions=(), resolution=256, z_channels=256, dropout=0.0,
            num_groups=32, mid_attention=False, resnet_bias=False,
            resnet_shortcut='output', pixel_range=(0.0, 1.0))
model = dict(
    type='AutoencoderTokenizer',
    data_preprocessor=dict(type='ImagePreprocessor', mean=[127.5] * 3,
                           std=[127.5] * 3),
    encoder=dict(type='ConvEncoder', in_channels=3, conv_in_bias=False,
                 downsample='avgpool', conv_out_kernel_size=1, **conv),
    quantizer=dict(type='VectorQuantizer', codebook_size=1024, embed_dim=256,
                   commitment_weight=0.25),
    decoder=dict(type='ConvDecoder', out_ch=3, num_up_blocks=2, **conv),
    use_quant_conv=False,
    use_post_quant_conv=False,
)
