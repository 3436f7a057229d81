# VAR-d17 (width 1088, 17 heads) on VAR's tokenizer: 371,191,905 parameters
# without the tokenizer (tested) — the depth ImageFolder's generator uses
# (ImageFolder adds two product-quantized branches: see projects/ImageFolder).
_base_ = ['./var_msrq-4k_d16_8xb96-200e_in1k-256.py']
model = dict(depth=17)
