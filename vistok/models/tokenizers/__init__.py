from .autoencoder import AutoencoderTokenizer
from .base import BaseTokenizer
from .titok import TiTokTokenizer, legacy_token_layout

__all__ = [
    'AutoencoderTokenizer', 'BaseTokenizer', 'TiTokTokenizer',
    'legacy_token_layout'
]
