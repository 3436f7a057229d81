# Taming VQGAN f16 (Esser et al. 2021; taming-transformers'
# vqgan_imagenet_f16_16384): conv encoder/decoder (ch 128, ch_mult
# 1,1,2,2,4, attention at 16x16), plain VQ 16384 x 256, L1 + LPIPS(VGG16)
# reconstruction, PatchGAN discriminator (3 layers, 64 channels, BatchNorm)
# with hinge loss and the adaptive GAN weight (eq. 7) times disc_weight 0.75.
# The tokenizer (encoder, quantizer, decoder, 1x1 convs) has 76,073,859
# parameters. VQ loss: beta=0.25 on the commitment term as in the paper
# (eq. 4); taming's code applies it to the codebook term ("legacy" bug).
# The LPIPS trunk is torchvision's VGG16 file, e.g. saved on a machine with
# internet by torchvision.models.vgg16(weights='IMAGENET1K_V1'); the linear
# heads come with the `lpips` package.
lpips_trunk_path = 'checkpoints/vgg16-397923af.pth'
conv = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
            attn_resolutions=(16, ), resolution=256, z_channels=256,
            dropout=0.0, num_groups=32)
model = dict(
    type='AutoencoderTokenizer',
    data_preprocessor=dict(type='ImagePreprocessor', mean=[127.5] * 3,
                           std=[127.5] * 3),
    encoder=dict(type='ConvEncoder', in_channels=3, **conv),
    quantizer=dict(type='VectorQuantizer', codebook_size=16384,
                   embed_dim=256, commitment_weight=0.25),
    decoder=dict(type='ConvDecoder', out_ch=3, **conv),
    reconstruction_loss=dict(type='L1Loss', loss_weight=1.0),
    perceptual_loss=dict(type='LPIPS', trunk_path=lpips_trunk_path,
                         loss_weight=1.0),
    discriminator=dict(type='PatchGANDiscriminator', in_channels=3,
                       base_channels=64, num_layers=3, norm='batch'),
    adversarial_loss=dict(type='AdversarialLoss', loss_type='hinge',
                          generator_weight=0.75, adaptive_weight=True,
                          discriminator_weight=1.0, start_iter=0),
    last_layer='decoder.conv_out.weight',
)
