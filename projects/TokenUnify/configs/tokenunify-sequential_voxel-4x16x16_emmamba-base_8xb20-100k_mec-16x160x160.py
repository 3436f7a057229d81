# TokenUnify pre-training as the released code / v1 paper run it: random-token
# prediction first, then next-token + next-all jointly (equal weights, the
# code's --auto_mode 1), as sequential stages of one run (the hook's default
# stages split training in halves).
_base_ = ['./tokenunify-curriculum_voxel-4x16x16_emmamba-base_8xb20-100k_mec-16x160x160.py']
custom_hooks = [dict(type='TaskWeightScheduleHook',
                     mode='sequential')]
