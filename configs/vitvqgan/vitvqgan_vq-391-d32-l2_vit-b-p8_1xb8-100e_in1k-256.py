# The SeiT / SeiT++ tokenizer (Park et al. 2023; Lee et al. 2024): the
# enhancing-transformers ViT-VQGAN (256 px, patch 8, 32 x 32 tokens, 32-d
# l2-normalised codes) whose tokens index SeiT's released 391 x 32
# codebook.ckpt (the size hard-coded as 391 in naver-ai/seit models_mtm.py
# and read from codebook.ckpt in token_transform.py build_codebook): SeiT's
# util/misc.py convert_to_tokens maps the tokenizer's 32-d output to the
# nearest of those 391 rows by cosine similarity, which is this quantizer's
# look-up. The tokenizer's own codebook (8192 codes in every
# enhancing-transformers config) is replaced by codebook.ckpt at conversion:
#   python tools/model_converters/vitvqgan.py tokenizer.ckpt OUT.pth \
#       --config <this file> --codebook codebook.ckpt --trust-checkpoint \
#       --code-path <enhancing-transformers checkout>
# Inferred, not published: SeiT does not say which released size it used
# (base assumed; a size mismatch is reported by the converter, then use
# --cfg-options), nor how the 391 codes were chosen (probably the codes the
# 8192-code tokenizer uses on ImageNet); if SeiT's pickled tokenizer
# returns the quantised code rather than the pre-quantisation vector, its
# tokens are "nearest of the nearest" and may differ from a direct look-up
# for codes outside the 391. See README.md.
_base_ = ['./vitvqgan_vq-8k-d32-l2_vit-b-p8_1xb8-100e_in1k-256.py']
seit_codebook_size = 391
model = dict(quantizer=dict(codebook_size=seit_codebook_size))
