# ImageFolder VP2-4096 (README: rFID 0.90; tokenizer only): one 16 x 16 scale
# per branch (256 latent tokens per branch, 2 branches), no quantizer dropout;
# otherwise the MSVR10P2 recipe. The official VP2 uses the single-scale
# l2-normalised VectorQuantizer; here it is the multi-scale quantizer with one
# scale (the same look-up, plus one Phi blend at the only scale).
_base_ = ['./imagefolder_msvr10p2-4k_dinov2-b_8xb128-200e_in1k-256.py']
model = dict(
    encoder=dict(latent_grid_size=16),
    decoder=dict(latent_grid_size=16),
    quantizer=dict(quantizer=dict(scales=[16], dropout_ratio=0.0,
                                  start_scale=1)))
