# TiTok grid base = the grid's L-32 cell (paper Appendix Table 4(a): rFID 6.6;
# the 6.59 baseline of Table 3(a)); 610,277,388 parameters without the
# teacher (meta device).
#
# TiTok's token-count x model-size grid (Yu et al. 2024, Appendix Table 4(a),
# the README's recon_w_model_size_num_token.png): stage-1 TiTok-{S,B,L}-K,
# K in {16, 32, 64, 96, 128, 192, 256}, rFID of the teacher's decoding of the
# proxy codes (no decoder fine-tuning). The paper's preliminary runs use a
# codebook of 1024 and a short schedule: batch 256 over 500k iterations
# (~100 epochs), random crop and flip. One override of the primitive
# (../titok_vq-4k_l32_8xb32-1m_in1k-256.py): codebook 4096 -> 1024 and
# 1M -> 500k iterations, the cosine's end with it; the 10k warm-up and
# everything else are the primitive's (the paper does not restate them for
# these runs: inferred). Every other cell overrides only the encoder /
# decoder `size` and `num_latent_tokens` of this one.
_base_ = ['../titok_vq-4k_l32_8xb32-1m_in1k-256.py']
max_iters = 500000
model = dict(quantizer=dict(codebook_size=1024))
param_scheduler = [
    _base_.param_scheduler[0],
    dict(_base_.param_scheduler[1], end=max_iters),
]
train_cfg = dict(max_iters=max_iters)
