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
seg_test_dataloader = dict(
    batch_size=1,
    num_workers=1,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='EMVolumeDataset', data_root=data_root,
                 volumes=[wafer(w) for w in test_wafers],
                 crop_size=crop_size, test_mode=True, test_crops='whole',
                 pipeline=[affinities, pack]))
pretrain_dataloader = dict(
    batch_size=20,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='ResumableInfiniteSampler', shuffle=True),
    dataset=dict(type='EMVolumeDataset', data_root=pretrain_root,
                 volumes=['*.h5'], raw_key='main', label_key=None,
                 normalize='minmax', crop_size=crop_size,
                 samples_per_epoch=10000, pipeline=[pack]))
del wafer
