"""Datasets, samplers and transforms; importing this module registers them
all. Images are RGB ``(H, W, 3)`` ``uint8`` arrays until
:class:`~vistok.datasets.transforms.PackInputs` makes them ``(3, H, W)``
tensors."""
from . import em, samplers, transforms
from .base import BaseImageDataset, SeededDatasetMixin, build_pipeline
from .compact_format import (
    CompactFormatError,
    CompactTokenFile,
    tokens_sha256,
    write_compact,
)
from .image_folder import ImageFolderDataset
from .procedural import ProceduralShapesDataset
from .samplers import ResumableInfiniteSampler, SeededIndex
from .seit_format import SeiTFormatError, SeiTTokenFile, write_seit
from .skimage_photos import SkimagePhotoDataset
from .tar_shards import TarShardDataset
from .token_files import (
    CompactTokenDataset,
    SeiTTokenDataset,
    read_class_list,
    select_images,
)
from .token_shards import TokenShardDataset
from .webdataset import WebDatasetShards

__all__ = [
    'BaseImageDataset', 'em', 'ImageFolderDataset', 'ProceduralShapesDataset',
    'ResumableInfiniteSampler', 'SeededDatasetMixin', 'SeededIndex',
    'SkimagePhotoDataset', 'TarShardDataset', 'TokenShardDataset',
    'WebDatasetShards', 'build_pipeline', 'samplers', 'transforms',
    'CompactFormatError', 'CompactTokenDataset', 'CompactTokenFile',
    'SeiTFormatError', 'SeiTTokenDataset', 'SeiTTokenFile',
    'read_class_list', 'select_images', 'tokens_sha256', 'write_compact',
    'write_seit'
]
