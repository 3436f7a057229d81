"""Electron-microscopy volumes: lazy HDF5 crops, an embedded synthetic EM
generator, EM augmentations and affinity targets. Volumes are ``(D, H, W)``
= ``(z, y, x)``; importing this package registers its datasets and
transforms."""
from .affinity import (
    NEAREST_NEIGHBOUR_OFFSETS,
    GenerateAffinities,
    affinities_from_labels,
    widen_label_boundaries,
)
from .synthetic import (
    SyntheticEMDataset,
    SyntheticEMVolume,
    write_synthetic_h5,
)
from .transforms import (
    EMCenterCrop,
    EMCutout,
    EMElasticDeform,
    EMGaussianBlur,
    EMGaussianNoise,
    EMIntensityJitter,
    EMMisalignment,
    EMMissingSection,
    EMMotionBlur,
    EMRandomFlip,
    EMRandomPerturbation,
    EMRandomRotate90,
    PackEMInputs,
    gaussian_kernel_1d,
)
from .volume_dataset import (
    CREMI_UNLABELLED,
    EMVolumeDataset,
    NiftiVolume,
    read_window,
    resolve_region,
)

__all__ = [
    'CREMI_UNLABELLED', 'EMCenterCrop', 'EMCutout', 'EMElasticDeform',
    'EMGaussianBlur', 'EMGaussianNoise', 'EMIntensityJitter',
    'EMMisalignment', 'EMMissingSection', 'EMMotionBlur', 'EMRandomFlip',
    'EMRandomPerturbation', 'EMRandomRotate90', 'EMVolumeDataset',
    'GenerateAffinities', 'NEAREST_NEIGHBOUR_OFFSETS', 'NiftiVolume',
    'PackEMInputs', 'SyntheticEMDataset', 'SyntheticEMVolume',
    'affinities_from_labels', 'gaussian_kernel_1d', 'read_window',
    'resolve_region', 'widen_label_boundaries', 'write_synthetic_h5'
]
