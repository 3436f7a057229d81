# MARVEL's residual lookup-free quantizer (the marvel_* configs set
# model.quantizer to it, with their depth): each depth quantizes the residual
# by sign (12 bits, 4,096 implicit codes per depth), output scaled 2^-d,
# commitment 0.25 and MAGVIT-2 entropy losses (weight 0.02, temperature 0.01,
# gamma 1), weighted as MARVEL's official code does
# (depth_loss_space='mdq', PadrickLeee/MDQ modeling/quantizer/quantizer.py at
# 7816c37): the commitment of depth d on the unscaled residual, averaged over
# the depths; one entropy term on the unscaled residuals of all depths pooled.
# vistok's alternative, depth_loss_space='scaled', measures depth d on
# r_d * 2^d (commitment 4^d x the official one, entropy per depth against
# the +-1 codes it quantizes with, averaged over the depths).
marvel_quantizer = dict(
    _delete_=True,
    type='ResidualQuantizer',
    depth=1,
    depth_scales='pow2',
    depth_loss_reduction='mean',
    depth_loss_space='mdq',
    quantizer=dict(type='LookupFreeQuantizer', codebook_bits=12,
                   commitment_weight=0.25, entropy_weight=0.02,
                   temperature=0.01, diversity_gamma=1.0))
