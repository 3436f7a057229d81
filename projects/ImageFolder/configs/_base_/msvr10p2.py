# ImageFolder's MSVR10P2 quantizer (lxa9867/ImageFolder configs/MSVR10P2-*.yaml,
# tokenizer/tokenizer_image/quant.py VectorQuantizer2; notes B.2): two
# product-quantized branches, each a VAR-style multi-scale residual VQ over an
# 11 x 11 grid with the scales 1,1,2,3,3,4,5,6,8,11 (286 positions), a
# codebook of `codebook_size` x 32 per branch shared across its scales, cosine
# look-up with the raw code added (`using_znorm`), 4 partially shared Phi
# convs blended 0.5 / 0.5, commitment 0.25 summed over the scales (the
# official reduction), quantizer dropout of the first int(0.1 B) samples to a
# kept-scale count drawn from [3, 10], one draw shared by both branches. The
# tokenizer configs and the VAR generator configs both read `quantizer` from
# this file (one source).
codebook_size = 4096
code_dim = 32
num_branches = 2
scales = [1, 1, 2, 3, 3, 4, 5, 6, 8, 11]
quantizer = dict(
    type='ProductQuantizer',
    num_branches=num_branches,
    share_dropout=True,
    quantizer=dict(
        type='MultiScaleResidualQuantizer',
        scales=scales,
        use_phi=True,
        num_phi=4,
        phi_ratio=0.5,
        commitment_weight=0.25,
        commitment_reduction='sum',
        codebook_weight=1.0,
        dropout_ratio=0.1,
        dropout_mode='first_fraction',
        start_scale=3,
        # set explicitly: never rely on the multi-scale default look-up
        quantizer=dict(type='VectorQuantizer', codebook_size=codebook_size,
                       embed_dim=code_dim, use_l2_norm=True,
                       l2_norm_output=False)))
