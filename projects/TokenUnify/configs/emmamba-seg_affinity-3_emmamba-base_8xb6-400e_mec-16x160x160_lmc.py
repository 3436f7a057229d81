# Table 1 row "EMmamba" with LMC post-processing (Wafer4 VOI 2.2177 / ARAND
# 0.1973): the official utils/lmc.py path — elf's distance-transform
# watershed fragments per slice (threshold 0.25, sigma seeds / weights 2,
# alpha 0.9, min_size 100) and a multicut on the region adjacency graph with
# elf's cost mapping (p squeezed to 0.998 p + 0.001, edge-size weighted),
# solved by greedy additive edge contraction + Kernighan-Lin (vistok's NumPy
# solvers standing in for nifty's).
_base_ = ['./emmamba-seg_affinity-3_emmamba-base_8xb6-400e_mec-16x160x160.py']
model = dict(postprocessor=dict(_delete_=True, type='Multicut', beta=0.5,
                                solver='kernighan_lin'))
