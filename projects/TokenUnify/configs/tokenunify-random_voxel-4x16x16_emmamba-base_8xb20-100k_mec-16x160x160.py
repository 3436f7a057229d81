# Random-token prediction only (SimMIM-style: masked tokens overwritten by
# noise, the whole crop reconstructed): the "MAE" pre-training of the v1
# table's EMmamba* rows and the "Random (masked) only" ablation.
_base_ = ['./tokenunify-curriculum_voxel-4x16x16_emmamba-base_8xb20-100k_mec-16x160x160.py']
model = dict(tasks=dict(_delete_=True,
                        random=dict(mask_ratio=0.4, fill='noise',
                                    loss_on='all')),
             prefix=None,
             head=None)
custom_hooks = []
