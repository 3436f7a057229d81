# ViT-VQGAN (Yu et al. 2022, "Vector-quantized Image Modeling with Improved
# VQGAN") as implemented by thuanz123/enhancing-transformers (MIT; commit
# e1c185d, enhancing/modules/stage1/{vitvqgan,layers,quantizers}.py), the
# tokenizer of SeiT / SeiT++. Sizes of its configs/imagenet_vitvq_base.yaml
# (the released thuanz123/vitvqgan-imagenet-base weights): 256 px, patch 8
# (32 x 32 tokens), encoder and decoder ViT width 768, depth 12, 12 heads of
# 64, MLP 3072 with tanh, bias-free qkv, LayerNorm eps 1e-5, fixed 2-D
# sin-cos positions; factorised l2-normalised codes: Linear 768 -> 32
# (encoder.proj_out, the official pre_quant), 8192 x 32 codebook,
# Linear 32 -> 768 (decoder.embed, post_quant); a transposed-conv pixel head
# (decoder.head). The weights see images in [0, 1] (pixel_range).
# Losses of the official recipe: L2 ("loggaussian") + 0.1 LPIPS + codebook /
# commitment (beta 0.25); its StyleGAN discriminator (adversarial weight
# 0.1) has no vistok counterpart and is left out.
# Conversion: tools/model_converters/vitvqgan.py (configs/vitvqgan/).
lpips_trunk_path = 'checkpoints/vgg16-397923af.pth'
code_dim = 32
vit = dict(img_size=256, patch_size=8, embed_dim=768,
           depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=False,
           pos_embed='sincos', norm_eps=1e-5, mlp_act='tanh',
           pixel_range=(0.0, 1.0))
model = dict(
    type='AutoencoderTokenizer',
    data_preprocessor=dict(type='ImagePreprocessor', mean=[127.5] * 3,
                           std=[127.5] * 3),
    encoder=dict(type='ViTEncoder', in_channels=3, out_channels=code_dim,
                 **vit),
    quantizer=dict(type='VectorQuantizer', codebook_size=8192,
                   embed_dim=code_dim, use_l2_norm=True,
                   commitment_weight=0.25, codebook_weight=1.0),
    decoder=dict(type='ViTDecoder', in_channels=code_dim, out_channels=3,
                 **vit),
    use_quant_conv=False,
    use_post_quant_conv=False,
    reconstruction_loss=dict(type='MSELoss', loss_weight=1.0),
    perceptual_loss=dict(type='LPIPS', trunk_path=lpips_trunk_path,
                         loss_weight=0.1),
    last_layer='decoder.head.proj.weight',
)
