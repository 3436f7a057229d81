# TiTok-L-32 stage 2 sharded with FSDP (fully_shard): the TiTok decoder's
# transformer blocks and the pixel decoder's resolution levels are units;
# the trainable parts (decoder, proxy head, pixel codebook and decoder,
# discriminator) and their EMA copies are sharded (1/8 per rank on 8 GPUs,
# with their AdamW state); the frozen encoder and quantizer stay whole on
# every rank. Each block's activations are recomputed in the backward pass.
#
# Precision: the parent trains in float16 with AmpOptimWrapper (autocast and
# loss scaling, TiTok's accelerate setting). vistok's FSDP refuses fp16
# loss scaling (a scaler would have to agree on skipped steps across the
# shards, which cannot be tested without GPUs), so this variant computes in
# bfloat16: FSDP gathers bfloat16 weights (float32 master weights, optimizer
# state and gradient reduction) and AutocastOptimWrapper runs the rest (the
# frozen encoder, the losses) under bfloat16 autocast without a scaler. The
# wrapper key and the two optimizer wrappers' type / dtype are the only
# changes (tests/test_configs_fsdp.py). Per-rank memory of both:
# tools/analysis/estimate_memory.py CONFIG --strategy both.
_base_ = ['./titok_vq-4k_l32-stage2_8xb32-500k_in1k-256.py']
model_wrapper_cfg = dict(type='FullyShardWrapper', param_dtype='bfloat16',
                         reduce_dtype='float32',
                         activation_checkpointing=True)
optim_wrapper = dict(
    generator=dict(type='AutocastOptimWrapper', dtype='bfloat16'),
    discriminator=dict(type='AutocastOptimWrapper', dtype='bfloat16'))
