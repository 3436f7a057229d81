# A tiny transformer tokenizer trained as a GAN for engine tests (FSDP): a
# TiTok with a pixel head (latent-token ViT of width 32, 2 blocks), the tiny
# VQGAN's discriminator, adversarial loss, EMA copy and two optimizers.
_base_ = ['./tiny_vqgan.py']
vit = dict(size=None, width=32, depth=2, num_heads=2, num_latent_tokens=8,
           img_size=32, patch_size=4)
model = dict(
    type='TiTokTokenizer',
    encoder=dict(_delete_=True, type='LatentTokenEncoder', out_channels=8,
                 **vit),
    decoder=dict(_delete_=True, type='LatentTokenDecoder', in_channels=8,
                 **vit),
    head='pixel',
)
