# Task ablation (v2), row "Random + Next-all": the curriculum pre-training with
# only these tasks, at equal constant weights (INFERRED: the ablation's
# weights are not published; the curriculum hook needs all three tasks).
# No next-token task, so no next-token head (`head=None`).
_base_ = ['../tokenunify-curriculum_voxel-4x16x16_emmamba-base_8xb20-100k_mec-16x160x160.py']
model = dict(tasks=dict(_delete_=True,
                        random=dict(mask_ratio=0.4, fill='noise', loss_on='all'),
                        next_all=dict(loss_on='all')),
             head=None)
custom_hooks = []
