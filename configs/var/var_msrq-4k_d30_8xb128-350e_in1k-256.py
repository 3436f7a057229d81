# VAR-d30 (width 1920, 30 heads, stochastic depth 0.125), the largest
# 256 px VAR: 2,010,020,356 parameters without the tokenizer (tested; VAR's
# build_vae_var at depth 30 has the same count, "2.0B"; paper FID 1.97).
# VAR's d30 recipe (README: --depth=30 --bs=1024 --ep=350 --tblr=8e-5
# --fp16=1 --alng=1e-5 --wpe=0.01 --twde=0.08): global batch 1024, 350
# epochs, lr 8e-5 x 1024 / 256, AdaLN gate init 1e-5 (vistok's default
# init_adaln_gamma); as in the d16 config, the warm-up is linear over 3
# epochs and the final lr ratio (wpe) and weight-decay ramp (twde) are not
# reproduced. At 128 images per GPU the fp32 AdamW state alone (~32 GB per
# rank) leaves little of an 80 GB GPU: see the _fsdp variant and
# tools/analysis/estimate_memory.py. The released var_d30.pth converts
# with tools/model_converters/var.py (--cfg-options model.depth=30).
_base_ = ['./var_msrq-4k_d16_8xb96-200e_in1k-256.py']
num_gpus, batch_per_gpu = 8, 128
iters_per_epoch = 1281167 // (num_gpus * batch_per_gpu)
model = dict(depth=30)
train_dataloader = dict(batch_size=batch_per_gpu)
optim_wrapper = dict(optimizer=dict(lr=8e-5 * num_gpus * batch_per_gpu / 256))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0,
         end=3 * iters_per_epoch),
]
train_cfg = dict(max_iters=350 * iters_per_epoch)
