# MEC wafers (TokenUnify's Table 1 data) as HDF5: `wafer/wafer{N}_inputs.h5`
# and `wafer/wafer{N}_labels.h5` under `data_root`, one dataset `main`
# (z, y, x) each (the official layout). Train: wafers 25, 26, 26_2, 36;
# test: wafer4 and wafer36_2, whole volumes. Unlabelled pre-training volumes:
# the official layout (`dataloader/data_provider_pretraining.py`,
# TokenUnify@221674f: `glob(EM_data/*hdf)`, then `*h5` and `*gz` in each,
# e.g. HF cyd0806/EM_pretrain_data `FAFB_hdf/`): every `*hdf/*.h5` (key
# `main`) and `*hdf/*.nii(.gz)` (NIfTI, read lazily) under `pretrain_root`.
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
# Pre-training input perturbation (the target stays clean): with p = 0.5 one
# of Gaussian noise / Gaussian blur / cutout, chosen uniformly (so each one
# p = 1/6), as the official providers (`if random.random() > 0.5:
# apply_perturbations`, `random.choice`). Their ranges are from dbMiM, not
# TokenUnify's release (which lacks `pretraining_all.yaml`): the transforms'
# defaults, dbMiM `config/pretraining_all.yaml` @fdd9443 (noise std
# 0.01-0.2, blur kernel 3-9, sigma 0-2) and `utils/
# consistency_aug_perturbations.py` @939d70f (cutout 60-100 boxes of
# 5-10 x 10-20 x 10-20 voxels).
pretrain_perturbation = dict(
    type='EMRandomPerturbation', prob=0.5,
    transforms=[dict(type='EMGaussianNoise', prob=1.0),
                dict(type='EMGaussianBlur', prob=1.0),
                dict(type='EMCutout', prob=1.0)])
pretrain_dataloader = dict(
    batch_size=20,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='ResumableInfiniteSampler', shuffle=True),
    dataset=dict(type='EMVolumeDataset', data_root=pretrain_root,
                 volumes=[['*hdf/*.h5', '*hdf/*.nii', '*hdf/*.nii.gz']],
                 raw_key='main', label_key=None,
                 normalize='minmax', crop_size=crop_size,
                 samples_per_epoch=10000,
                 pipeline=[pretrain_perturbation, pack]))
del wafer, table1_gt
