"""SeiT / SeiT++ on stored tokens: importing this package registers its
modules in vistok's registries (configs pull it in with
``custom_imports=dict(imports=['projects.SeiTpp.seitpp'])``)."""
from .classifiers import SeiTViTClassifier, TokenEmbedding, TokenViTClassifier
from .mtm import MaskedTokenAccuracy, MaskedTokenModel, MaskRatio, sample_masks
from .synonyms import build_synonyms, load_synonyms, write_synonyms
from .token_adapt import TokenAdapt, TokenAdaptTrainer
from .transforms import ReplaceSynonym, SwapCode, TokenEDA

__all__ = [
    'SeiTViTClassifier', 'TokenEmbedding', 'TokenViTClassifier',
    'MaskedTokenAccuracy', 'MaskedTokenModel', 'MaskRatio', 'sample_masks',
    'TokenAdapt', 'TokenAdaptTrainer', 'build_synonyms', 'load_synonyms',
    'write_synonyms', 'ReplaceSynonym', 'SwapCode', 'TokenEDA'
]
