# VAR-d17 (width 1088, 17 heads) on VAR's tokenizer: 371,191,905 parameters
# without the tokenizer (tested; VAR's build_vae_var at depth 17 has the
# same count) — the depth ImageFolder's generator uses (ImageFolder adds two
# product-quantized branches: see projects/ImageFolder). VAR released no
# d17 transformer.
_base_ = ['./var_msrq-4k_d16_8xb96-200e_in1k-256.py']
model = dict(depth=17)
