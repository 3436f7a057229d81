# Tiny TiTok / MARVEL for CPU demos and tests on the photos shipped with
# scikit-image (no download): a latent-token ViT of width 64, 2 blocks, 4
# heads, 8 latent tokens and 4 px patches at 64 px (a 16 x 16 decoder grid),
# MARVEL's residual LFQ (depth 1 here), stage 1 against the proxy codes of a
# frozen teacher: the f4 VQ-VAE demo tokenizer (512 codes, 16 x 16 grid), 300
# iterations of Adam.
_base_ = [
    '../../../../configs/_base_/models/vqvae_conv-f4.py',
    '../../../../configs/_base_/datasets/skimage_photos_64.py',
    '../../../../configs/_base_/schedules/adam_2k.py',
    '../../../../configs/_base_/default_runtime.py',
    './marvel_quantizer.py',
]
teacher_path = 'work_dirs/vqvae_vq-512_conv-f4_1xb8-2k_skimage-64/iter_2000.pth'
teacher = {{_base_.model}}
vit = dict(size=None, width=64, depth=2, num_heads=4, num_latent_tokens=8,
           img_size=64, patch_size=4)
# replaces the teacher's model piece by piece (the quantizer's _delete_ is
# in marvel_quantizer)
model = dict(
    type='TiTokTokenizer',
    encoder=dict(_delete_=True, type='LatentTokenEncoder', out_channels=12,
                 **vit),
    quantizer={{_base_.marvel_quantizer}},
    decoder=dict(_delete_=True, type='LatentTokenDecoder', in_channels=12,
                 **vit),
    # L2 on [0, 1] images as TiTok's pixel losses, used by the pixel modes
    reconstruction_loss=dict(type='MSELoss', loss_weight=1.0,
                             pixel_range=(0.0, 1.0)),
    head='proxy',
    num_proxy_codes=512,
    teacher=teacher,
    teacher_path=teacher_path,
    ema=dict(decay=0.99, use_for_val=True),
)
train_cfg = dict(max_iters=300, val_interval=100)
default_hooks = dict(checkpoint=dict(interval=100))
custom_hooks = [dict(type='CodebookUsageHook', interval=50)]
# PSNR of the teacher's rendering of the argmax proxy codes; codebook usage
# per depth ('depth0.usage', ...) and pooled over the depths ('usage', what
# the official evaluator reports), entropies in bits as there
val_evaluator = [dict(type='PSNR'), dict(type='CodebookUsage', log_base=2)]
test_evaluator = val_evaluator
