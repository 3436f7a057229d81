# Embedded synthetic EM data (vistok.datasets.em.SyntheticEMDataset): cells
# as anisotropic Voronoi regions with dark membranes, texture, blur and
# noise, generated in memory from a seed — the TokenUnify pipeline runs on a
# fresh machine. Training: random 16x32x32 crops of one 32x96x96 volume
# (seed 0); evaluation: another volume (seed 1), as fixed crops (pre-training)
# or whole (segmentation).
crop_size = (16, 32, 32)
augment = [
    dict(type='EMRandomFlip', prob=0.5),
    dict(type='EMRandomRotate90', prob=0.5),
    dict(type='EMIntensityJitter'),
]
# affinity targets with the official in-plane boundary widening
affinities = dict(type='GenerateAffinities', widen_boundaries=True)
pack = dict(type='PackEMInputs')
# Pre-training input perturbation of `mec.py` (with p = 0.5 one of Gaussian
# noise / blur / cutout, ranges from dbMiM; the target stays clean) with the
# cutout boxes scaled in-plane to the 32x32 crop: dbMiM's 10-20 voxels of a
# 160 crop -> 2-4 of 32, so a box covers the same fraction (INFERRED).
pretrain_perturbation = dict(
    type='EMRandomPerturbation', prob=0.5,
    transforms=[dict(type='EMGaussianNoise', prob=1.0),
                dict(type='EMGaussianBlur', prob=1.0),
                dict(type='EMCutout', size_yx=(2, 4), prob=1.0)])
pretrain_pipeline = augment + [pretrain_perturbation, pack]
seg_train_pipeline = augment + [affinities, pack]
seg_test_pipeline = [affinities, pack]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    sampler=dict(type='ResumableInfiniteSampler', shuffle=True),
    dataset=dict(type='SyntheticEMDataset', volume_shape=(32, 96, 96),
                 num_volumes=1, seed=0, crop_size=crop_size,
                 samples_per_epoch=1000))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='SyntheticEMDataset', volume_shape=(32, 64, 64),
                 num_volumes=1, seed=1, crop_size=crop_size,
                 test_mode=True))
test_dataloader = val_dataloader
