"""Batches of images for tokenizers: uint8 RGB ``(C, H, W)`` in [0, 255]
stacked and normalised, with the inverse map back to pixels."""
import copy
from typing import Optional, Sequence, Union

import torch
from mmengine.model import ImgDataPreprocessor

from vistok.registry import MODELS

#: value range of pixels (``to_pixels`` output, ``pred_img`` / ``gt_img``)
PIXEL_MAX = 255.0


@MODELS.register_module()
class ImagePreprocessor(ImgDataPreprocessor):
    """mmengine's ``ImgDataPreprocessor`` (stack, optional BGR↔RGB, pad,
    ``(x - mean) / std``) with its inverse as a public method,
    :meth:`to_pixels`, so a model turns its outputs back into pixels
    without reading the preprocessor's private fields.

    Args:
        mean, std: per-channel normalisation (``None`` for none); vistok's
            default, ``127.5``, maps [0, 255] to [-1, 1].
        **kwargs: the other ``ImgDataPreprocessor`` arguments.
    """

    def __init__(self,
                 mean: Optional[Sequence[Union[float, int]]] = None,
                 std: Optional[Sequence[Union[float, int]]] = None,
                 **kwargs):
        super().__init__(mean=mean, std=std, **kwargs)
        #: whether inputs are normalised (``mean`` / ``std`` given)
        self.normalizes = mean is not None

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation (``x · std + mean``) of ``(B, C, H, W)``
        images and clamp to ``[0, PIXEL_MAX]``."""
        if self.normalizes:
            images = images * self.std + self.mean
        return images.clamp(0, PIXEL_MAX)


#: maps CHW uint8 RGB images in [0, 255] to [-1, 1]
DEFAULT_IMAGE_PREPROCESSOR = dict(
    type='ImagePreprocessor', mean=[127.5] * 3, std=[127.5] * 3)


def image_preprocessor_cfg(cfg: Optional[Union[dict, torch.nn.Module]]
                           ) -> Union[dict, torch.nn.Module]:
    """The data preprocessor a tokenizer builds from its ``cfg``: ``None``
    gives :data:`DEFAULT_IMAGE_PREPROCESSOR`; a config of mmengine's
    ``ImgDataPreprocessor`` (configs written before
    :class:`ImagePreprocessor` existed) becomes an ``ImagePreprocessor``
    with the same arguments — the same batches and state dict, plus
    :meth:`~ImagePreprocessor.to_pixels`. Modules are taken as they are."""
    if cfg is None:
        return copy.deepcopy(DEFAULT_IMAGE_PREPROCESSOR)
    if isinstance(cfg, dict) and cfg.get('type') == 'ImgDataPreprocessor':
        cfg = dict(cfg, type='ImagePreprocessor')
    return cfg
