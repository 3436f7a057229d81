# Storage-budget row 0.3 GB of paper_tables.md 2.2 (full: 1.4 GB): the
# same recipe on a class-balanced 0.3 / 1.4 of the training tokens
# (SeiTTokenDataset subset_fraction; the paper's subset rule is not
# published: inferred, see the README). The iteration count stays the
# full run's (more passes over the smaller set); the paper does not say.
_base_ = ['../seitpp_vitvq-391_vit-b_8xb128-100e_in1k-tok32.py']
train_dataloader = dict(dataset=dict(subset_fraction=0.3 / 1.4,
                                     subset_seed=0))
mtm_checkpoint = ('work_dirs/seitpp-mtm_vitvq-391_vit-b_8xb128-400e_in1k-'
                  'tok32-0.3gb/iter_500400.pth')
model = dict(pretrained=mtm_checkpoint)
