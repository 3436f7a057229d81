# MARVEL's residual lookup-free quantizer (the marvel_* configs set
# model.quantizer to it, with their depth): each depth quantizes the residual
# by sign (12 bits, 4,096 implicit codes per depth), output scaled 2^-d,
# commitment 0.25 and MAGVIT-2 entropy losses (weight 0.02, temperature 0.01,
# gamma 1) per depth, averaged over the depths; the entropy of depth d is
# scored against the +-1 codes it quantizes with (its input is r_d * 2^d).
marvel_quantizer = dict(
    _delete_=True,
    type='ResidualQuantizer',
    depth=1,
    depth_scales='pow2',
    depth_loss_reduction='mean',
    quantizer=dict(type='LookupFreeQuantizer', codebook_bits=12,
                   commitment_weight=0.25, entropy_weight=0.02,
                   temperature=0.01, diversity_gamma=1.0))
