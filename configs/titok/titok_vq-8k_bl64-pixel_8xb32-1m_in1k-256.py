# TiTok-BL-64 VQ, the single-stage VQ-8k release (bytedance/1d-tokenizer
# README_TiTok.md "TiTok-BL-64 VQ Tokenizer", rFID 2.06;
# configs/infer/TiTok/titok_bl64_vq8k.yaml at commit 942a96fb:
# tokenizer_titok_bl64_vq8k.bin): base encoder, large decoder, 64 tokens of
# a plain (not l2-normalised) VQ 8192 x 64, is_legacy False (the fixed
# latent layout of TiTok issue #17) and a pixel decoder (decoder.ffn.0 1x1
# conv to 16 x 16 x 3 values per patch, unpatchify, 3x3 conv_out: the
# 'pixel' head) instead of proxy codes: no teacher. 390,016,148 parameters
# (meta device). The release converts into this model
# (tools/model_converters/titok.py ... --config this file; tested on the
# full-size official layout). The official training recipe of these
# releases is not published (no training config at that commit): training
# with this config uses the primitive's optimizer and schedule and the
# tokenizer's default pixel loss, not a verified recipe.
_base_ = ['./titok_vq-4k_l32_8xb32-1m_in1k-256.py']
token_size, num_latent_tokens = 64, 64
model = dict(
    encoder=dict(size='B', num_latent_tokens=num_latent_tokens,
                 out_channels=token_size),
    quantizer=dict(codebook_size=8192, embed_dim=token_size,
                   use_l2_norm=False),
    decoder=dict(size='L', num_latent_tokens=num_latent_tokens,
                 in_channels=token_size),
    head='pixel',
    teacher=None,
    teacher_path=None,
    is_legacy=False)
