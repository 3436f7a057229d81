# UniCode HQ-VAE on a 16,384-token subset of the LLM vocabulary: the tokens
# whose embedding norm is >= 1, the 16,384 smallest such norms, re-sorted by
# token id (official EMAVectorQuantizer when n_embed < 32000; the
# dataclass default n_embed is 16384). Which size the released tokenizer
# used is not published (labelled inferred).
_base_ = ['./unicode-hqvae_hq-llm32k-d4096_conv-f16_8xb48-50e_llava-256.py']
num_codes = 16384
model = dict(quantizer=dict(top_quantizer=dict(
    codebook_size=num_codes, external_num_codes=num_codes)))
