# The curriculum pre-training with EMmamba-huge (1,009,174,145 parameters)
# sharded with FSDP (fully_shard): each of the 8 EMMambaLayers is a unit,
# the backbone's remaining layers (stem, MONAI decoder) and the next-token
# head are sharded as parts; blocks compute in bfloat16, gradients are
# reduced in float32, the sharded weights and AdamW state stay float32 (1/8
# per rank on 8 GPUs), and each layer's activations are recomputed in the
# backward pass. Exactly one key away from its DDP parent (tested by
# tests/test_configs_fsdp.py); per-rank memory of both:
# tools/analysis/estimate_memory.py CONFIG --strategy ddp|fsdp.
_base_ = ['./tokenunify-curriculum_voxel-4x16x16_emmamba-huge_8xb20-100k_mec-16x160x160.py']
model_wrapper_cfg = dict(type='FullyShardWrapper', param_dtype='bfloat16',
                         reduce_dtype='float32', activation_checkpointing=True)
