"""What vistok knows about official checkpoint layouts: per release, the
key-mapping rules (see :mod:`vistok.utils.convert`), the keys to drop or
leave at their initial values, and the checks that refuse a checkpoint the
target model cannot use. The scripts in ``tools/model_converters/`` add the
command line (:func:`vistok.apis.convert.converter_main`) and the default
configs.

* :mod:`.taming_vqgan`: taming-transformers ``VQModel`` -> AutoencoderTokenizer
* :mod:`.maskgit_vqgan`: MaskGIT-VQGAN (released with TiTok) ->
  AutoencoderTokenizer
* :mod:`.titok`: TiTok (bytedance/1d-tokenizer) -> TiTokTokenizer; reuses
  the MaskGIT-VQGAN decoder rules for its stage-2 pixel decoder
* :mod:`.imagefolder`: ImageFolder (lxa9867/ImageFolder ``VQModel``,
  MSVR10P2) -> ImageFolderTokenizer (``projects/ImageFolder``)
* :mod:`.vitvqgan`: ViT-VQGAN (thuanz123/enhancing-transformers ``ViTVQ``,
  the SeiT / SeiT++ tokenizer) -> AutoencoderTokenizer with ViT backbones
* :mod:`.var_vqvae`: VAR's multi-scale VQVAE (``vae_ch160v4096z32.pth``)
  -> AutoencoderTokenizer with ``MultiScaleResidualQuantizer``
* :mod:`.tokenunify_emmamba`: TokenUnify's EMmamba (ydchen0806/TokenUnify
  ``SegMamba``, pre-trained and fine-tuned) -> EMMamba
  (``projects/TokenUnify``) inside an AffinitySegmentor / pre-trainer
* :mod:`.var`: VAR's transformers (``var_d16.pth`` ... ``var_d30.pth``) ->
  VARGenerator
"""
from typing import Optional

import torch.nn as nn
from mmengine.config import Config
from mmengine.utils import import_modules_from_strings

from vistok.registry import MODELS


def build_config_model(config: str,
                       cfg_options: Optional[dict] = None) -> nn.Module:
    """The model of ``config`` (a file; ``cfg_options`` as
    ``--cfg-options``; its ``custom_imports`` imported), built without
    reading any weights file: the target of a conversion."""
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    return MODELS.build(cfg.model)
