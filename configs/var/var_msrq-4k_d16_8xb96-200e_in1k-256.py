# VAR-d16 (Tian et al. 2024, "Visual Autoregressive Modeling"): next-scale
# prediction over VAR's multi-scale residual tokenizer (scales 1..16, 680
# tokens, 4096 codes of dimension 32), width 1024, 16 heads, AdaLN class
# conditioning, block-causal attention over scales; 310,283,520 parameters
# without the tokenizer (counted on VAR's own code, the reference in
# tests/reference/var_transformer_official.py). VAR trains d16 for 200
# epochs at batch 768 with AdamW (0.9, 0.95), wd 0.05, lr 1e-4 x 768 / 256;
# paper FID 3.55 with VAR's cfg=1.5 ramped linearly over the scales
# (t = cfg * k / (n - 1) at scale k), top-k 900, top-p 0.96. vistok's
# linear schedule uses guidance_scale = 1 + cfg (tested against VAR's
# autoregressive_infer_cfg), so VAR's FID setting is guidance_scale=2.5
# (an earlier version of this config had 1.5, i.e. VAR's cfg=0.5).
# The released var_d16.pth converts with tools/model_converters/var.py
# (var_d20 / d24 / d30: add --cfg-options model.depth=20 etc.). The frozen
# quantizer (embeddings + phi convs) is read from `quantizer_weights` (a
# vistok tokenizer checkpoint with VAR's multi-scale quantizer, e.g. VAR's
# vae_ch160v4096z32.pth converted with tools/model_converters/var_vqvae.py).
_base_ = [
    '../_base_/datasets/imagenet_tokens.py',
    '../_base_/schedules/adamw_generator.py',
    '../_base_/default_runtime.py',
]
token_root = 'data/tokens/imagenet-train-var'
num_gpus, batch_per_gpu = 8, 96
iters_per_epoch = 1281167 // (num_gpus * batch_per_gpu)
model = dict(
    type='VARGenerator',
    depth=16,
    num_classes=1000,
    patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    quantizer=dict(type='MultiScaleResidualQuantizer',
                   scales=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
                   quantizer=dict(type='VectorQuantizer', codebook_size=4096,
                                  embed_dim=32)),
    quantizer_weights='checkpoints/var_tokenizer_vistok.pth',
    class_dropout_prob=0.1,
    sampler=dict(type='TokenSampler', temperature=1.0, top_k=900, top_p=0.96,
                 guidance_scale=2.5, guidance_schedule='linear'),
)
train_dataloader = dict(batch_size=batch_per_gpu,
                        dataset=dict(data_root=token_root))
optim_wrapper = dict(optimizer=dict(lr=1e-4 * num_gpus * batch_per_gpu / 256))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0,
         end=3 * iters_per_epoch),
]
train_cfg = dict(max_iters=200 * iters_per_epoch)
