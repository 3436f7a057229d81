# The MSVR10P2 quantizer at CPU-demo scale (one source for the tiny tokenizer
# and the tiny VAR): two branches, scales 1, 2, 4 over a 4 x 4 latent grid,
# 64 codes of dimension 8 per branch, quantizer dropout of the first half of
# the batch from 2 scales on.
_base_ = ['./msvr10p2.py']
codebook_size = 64
code_dim = 8
scales = [1, 2, 4]
quantizer = dict(quantizer=dict(
    scales=scales, dropout_ratio=0.5, start_scale=2,
    quantizer=dict(codebook_size=codebook_size, embed_dim=code_dim)))
