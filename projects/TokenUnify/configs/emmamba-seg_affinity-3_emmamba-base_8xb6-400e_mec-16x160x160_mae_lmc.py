# EMmamba* LMC: Wafer4 VOI 2.0054 / ARAND 0.1405 (multicut post-processing, see the _lmc config).
_base_ = ['./emmamba-seg_affinity-3_emmamba-base_8xb6-400e_mec-16x160x160_mae.py']
model = dict(postprocessor=dict(_delete_=True, type='Multicut', beta=0.5,
                                solver='kernighan_lin'))
