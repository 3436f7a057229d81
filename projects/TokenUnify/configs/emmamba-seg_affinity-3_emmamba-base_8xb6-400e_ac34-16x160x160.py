# EMmamba-base affinity fine-tuning on AC4, evaluated on AC3 (settings only:
# no published numbers in what we have). Official layout and split:
# `ac3_ac4/AC4_inputs.h5` / `_labels.h5` (key `main`), the first 80 slices of
# AC4 train; the first 100 slices of AC3 are evaluated.
_base_ = ['./emmamba-seg_affinity-3_emmamba-base_8xb6-400e_mec-16x160x160.py']
data_root = 'data/AC3_AC4'


def snemi(name, z_range):
    return dict(raw=f'ac3_ac4/{name}_inputs.h5',
                labels=f'ac3_ac4/{name}_labels.h5', raw_key='main',
                label_key='main', name=name,
                valid_region=(z_range, None, None))


train_dataloader = dict(dataset=dict(data_root=data_root,
                                     volumes=[snemi('AC4', (0, 80))]))
# scored as `voi/AC3`, ... against widened ground truth as MEC; the
# official AC3 reader does not clip intensities
val_dataloader = dict(dataset=dict(data_root=data_root, clip_max=None,
                                   volumes=[snemi('AC3', (0, 100))]))
test_dataloader = val_dataloader
del snemi
