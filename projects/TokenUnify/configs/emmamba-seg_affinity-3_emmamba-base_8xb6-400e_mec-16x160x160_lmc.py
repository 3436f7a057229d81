# Table 1 row "EMmamba" with LMC post-processing (Wafer4 VOI 2.2177 / ARAND
# 0.1973): watershed fragments + a multicut on the region adjacency graph
# (greedy additive edge contraction + Kernighan-Lin, vistok's NumPy solver;
# the paper used an LMC solver we cannot install here).
_base_ = ['./emmamba-seg_affinity-3_emmamba-base_8xb6-400e_mec-16x160x160.py']
model = dict(postprocessor=dict(_delete_=True, type='Multicut', beta=0.5,
                                solver='kernighan_lin'))
