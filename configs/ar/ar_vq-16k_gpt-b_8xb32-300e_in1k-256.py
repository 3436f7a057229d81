# LlamaGen GPT-B (Sun et al. 2024): class-conditional Llama-style AR
# transformer (RMSNorm, SwiGLU, 2-D RoPE, KV-cache sampling) over 16x16
# tokens of a 16384-code tokenizer (e.g. configs/vqgan LlamaGen-style);
# 110,888,448 parameters (tested). LlamaGen: 300 epochs, batch 256, AdamW
# (0.9, 0.95) lr 1e-4 wd 0.05, class dropout 0.1, token dropout 0.1; paper
# FID 5.46 at cfg 2.0.
_base_ = [
    '../_base_/datasets/imagenet_tokens.py',
    '../_base_/schedules/adamw_generator.py',
    '../_base_/default_runtime.py',
]
token_root = 'data/tokens/imagenet-train-vq16k'
num_gpus, batch_per_gpu = 8, 32
iters_per_epoch = 1281167 // (num_gpus * batch_per_gpu)
model = dict(
    type='ARGenerator',
    arch='gpt-b',
    num_classes=1000,
    vocab_size=16384,
    token_shape=(16, 16),
    class_dropout_prob=0.1,
    token_dropout=0.1,
    sampler=dict(type='TokenSampler', temperature=1.0, top_k=None,
                 top_p=None, guidance_scale=2.0,
                 guidance_schedule='constant'),
)
train_dataloader = dict(batch_size=batch_per_gpu,
                        dataset=dict(data_root=token_root))
train_cfg = dict(max_iters=300 * iters_per_epoch)
