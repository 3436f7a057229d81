# EMmamba-base affinity fine-tuning on CREMI A/B/C (settings only: the
# paper's CREMI numbers are not in what we have). Official layout and split:
# `cremi/cremi{A,B,C}_inputs.h5` / `_labels.h5` (key `main`), the first 100
# slices train, the next 25 are evaluated.
_base_ = ['./emmamba-seg_affinity-3_emmamba-base_8xb6-400e_mec-16x160x160.py']
data_root = 'data/CREMI'


def cremi(name, z_range):
    return dict(raw=f'cremi/cremi{name}_inputs.h5',
                labels=f'cremi/cremi{name}_labels.h5', raw_key='main',
                label_key='main', name=f'cremi{name}',
                valid_region=(z_range, None, None))


train_dataloader = dict(dataset=dict(
    data_root=data_root,
    volumes=[cremi(n, (0, 100)) for n in 'ABC']))
# scored per volume (`voi/cremiA`, ...) against widened ground truth as
# MEC; the official CREMI reader does not clip intensities
val_dataloader = dict(dataset=dict(
    data_root=data_root, clip_max=None,
    volumes=[cremi(n, (100, 125)) for n in 'ABC']))
test_dataloader = val_dataloader
del cremi
