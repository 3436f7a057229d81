# Scaling figure (Fig. 4 of v1), Mamba, column Random (no pre-training):
# the Table 1 fine-tuning with EMmamba-huge.
_base_ = ['../emmamba-seg_affinity-3_emmamba-base_8xb6-400e_mec-16x160x160.py']
model = dict(backbone=dict(arch='huge'))
