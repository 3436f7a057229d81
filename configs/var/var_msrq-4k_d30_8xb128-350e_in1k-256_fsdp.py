# VAR-d30 (2,010,020,356 parameters) sharded with FSDP (fully_shard):
# every AdaLNSelfAttn block is a unit computing in bfloat16, gradients are
# reduced in float32, the sharded weights and AdamW state stay float32 (1/8
# per rank on 8 GPUs), and each block's activations are recomputed in the
# backward pass. Exactly one key away from its DDP parent (tested by
# tests/test_configs_fsdp.py); per-rank memory of both:
# tools/analysis/estimate_memory.py CONFIG --strategy ddp|fsdp.
_base_ = ['./var_msrq-4k_d30_8xb128-350e_in1k-256.py']
model_wrapper_cfg = dict(type='FullyShardWrapper', param_dtype='bfloat16',
                         reduce_dtype='float32', activation_checkpointing=True)
