# A tiny EMmamba (same architecture as the paper's sizes: GSC blocks,
# tri-oriented Mamba stages, UNETR-style decoder) for CPU runs.
custom_imports = dict(imports=['projects.TokenUnify.tokenunify'],
                      allow_failed_imports=False)
model = dict(
    backbone=dict(type='EMMamba', feat_size=(4, 8, 8, 16), hidden_size=16,
                  depths=(1, 1, 1, 1), kernel_size=(1, 3, 3)))
