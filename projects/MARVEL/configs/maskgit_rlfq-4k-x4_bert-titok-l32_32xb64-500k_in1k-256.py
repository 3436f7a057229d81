# MaskGIT generator on MARVEL-L-32*4 tokens: 32 x 4 positions, vocabulary
# 4 x 4096 (see the x1 config for the layout).
_base_ = ['./maskgit_rlfq-4k-x1_bert-titok-l32_32xb64-500k_in1k-256.py']
depth = 4
token_root = 'data/tokens/imagenet-train-marvel-l32-x4'
model = dict(vocab_size=4096 * depth, token_shape=(32, depth))
train_dataloader = dict(dataset=dict(data_root=token_root))
