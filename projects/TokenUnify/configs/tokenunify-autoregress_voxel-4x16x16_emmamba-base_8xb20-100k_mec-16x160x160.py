# AutoRegress-only pre-training (scaling figure, column AutoRegress): the
# next-token + next-all tasks, no random token, with equal constant weights
# (the release's `main_pretrain_autoregress.py --auto_mode 1`, "joint", at
# 20 / GPU: `src/run_mamba_mae_AR.sh`), without the random-token run the
# release starts it from (that is the sequential recipe's stage 2).
_base_ = ['./tokenunify-curriculum_voxel-4x16x16_emmamba-base_8xb20-100k_mec-16x160x160.py']
model = dict(tasks=dict(_delete_=True,
                        next_token=dict(),
                        next_all=dict(loss_on='all')))
custom_hooks = []
