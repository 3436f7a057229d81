# MEC wafers (TokenUnify's Table 1 data) as HDF5: `wafer/wafer{N}_inputs.h5`
# and `wafer/wafer{N}_labels.h5` under `data_root`, one dataset `main`
# (z, y, x) each (the official layout). Train: wafers 25, 26, 26_2, 36;
# test: wafer4 and wafer36_2, whole volumes. Unlabelled pre-training volumes:
# every `*.h5` under `pretrain_root` (key `main`).
data_root = 'data/MEC'
pretrain_root = 'data/EM_pretrain'
crop_size = (16, 160, 160)
train_wafers = ['25', '26', '26_2', '36']
test_wafers = ['4', '36_2']


def wafer(name):
    return dict(raw=f'wafer/wafer{name}_inputs.h5',
                labels=f'wafer/wafer{name}_labels.h5', raw_key='main',
                label_key='main', name=f'wafer{name}')


affinities = dict(type='GenerateAffinities', widen_boundaries=True)
pack = dict(type='PackEMInputs')
seg_train_dataloader = dict(
    batch_size=6,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='ResumableInfiniteSampler', shuffle=True),
    dataset=dict(type='EMVolumeDataset', data_root=data_root,
                 volumes=[wafer(w) for w in train_wafers],
                 crop_size=crop_size, samples_per_epoch=10000,
                 pipeline=[affinities, pack]))
# Test intensities: the official reader of wafer 4 clips to 255 before
# dividing by 255 (`src/provider_valid.py`, branch 'wafer'); `clip_max=255`
# does that for both test wafers (a no-op on uint8 volumes).
seg_test_dataloader = dict(
    batch_size=1,
    num_workers=1,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='EMVolumeDataset', data_root=data_root,
                 volumes=[wafer(w) for w in test_wafers],
                 crop_size=crop_size, test_mode=True, test_crops='whole',
                 clip_max=255, pipeline=[affinities, pack]))
# Table 1 protocol (`src/inference_monai.py` on `Trainset.valid_provide`,
# `if_dilate: True`): VOI / ARAND against the ground truth with boundaries
# widened in-plane like the affinity targets (widened voxels -> 0, ignored),
# per test volume (`voi_merge/wafer4`, `arand/wafer36_2`, ...) and the mean
# (`voi`, `arand`); `*_unwidened` keys score against the stored labels.
table1_gt = dict(widen_gt_boundaries=True, report_unwidened=True)
seg_evaluator = [dict(type='VOI', **table1_gt),
                 dict(type='AdaptedRandError', **table1_gt)]
pretrain_dataloader = dict(
    batch_size=20,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='ResumableInfiniteSampler', shuffle=True),
    dataset=dict(type='EMVolumeDataset', data_root=pretrain_root,
                 volumes=['*.h5'], raw_key='main', label_key=None,
                 normalize='minmax', crop_size=crop_size,
                 samples_per_epoch=10000, pipeline=[pack]))
del wafer, table1_gt
