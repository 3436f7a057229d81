# UniCode RQ-VAE on the 16,384-token vocabulary subset (see the HQ-VAE
# subset config; inferred size).
_base_ = ['./unicode-rqvae_rq-llm32k-d4096_conv-f32_8xb48-50e_llava-256.py']
num_codes = 16384
model = dict(quantizer=dict(quantizer=dict(
    codebook_size=num_codes, external_num_codes=num_codes)))
