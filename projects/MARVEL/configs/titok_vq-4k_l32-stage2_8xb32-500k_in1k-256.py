# TiTok-L-32 stage 2 (README: rFID 2.21); 641,054,735 parameters (stage 1
# plus the MaskGIT-VQGAN decoder and codebook). The converted release
# (tools/model_converters/titok.py) loads into this model for testing.
_base_ = ['./_base_/titok_stage2.py']
