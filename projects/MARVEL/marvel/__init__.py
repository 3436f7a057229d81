"""MARVEL: TiTok 1-D tokenizers with residual lookup-free quantization.
Importing the package registers its modules in vistok's registries."""
from .titok import TiTokTokenizer, legacy_token_layout

__all__ = ['TiTokTokenizer', 'legacy_token_layout']
