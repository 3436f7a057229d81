# CPU demo of MARVEL stage 1 (_base_/titok_tiny.py) at depth 2: 8 x 2 ids
# per image. Make the teacher first (about 4 minutes on 2 cores):
#   python tools/train.py configs/vqvae/vqvae_vq-512_conv-f4_1xb8-2k_skimage-64.py
# then stage 2 (marvel_rlfq-4k-x2_vit-tiny-k8-stage2_1xb8-300_skimage-64.py)
# starts from this run's last checkpoint; the single-stage alternative is
# marvel_rlfq-4k-x2_vit-tiny-k8-pixel_1xb8-300_skimage-64.py.
_base_ = ['./_base_/titok_tiny.py']
# No commitment term: from scratch at this size it locks the latents into
# one image-independent sign pattern before the encoder has learnt to encode
# anything (measured after 200 iterations: all 18 photos share one code
# sequence with weight 0.25, and with 0.02; 18 distinct sequences without
# it). MARVEL never meets this: it starts from trained TiTok weights.
model = dict(quantizer=dict(depth=2,
                            quantizer=dict(commitment_weight=0.0)))
