from .conv import ConvDecoder, ConvEncoder
from .conv3d import Downsample3d, GSCBlock3d, ResBlock3d, Upsample3d
from .latent_grid_vit import DINOv2LatentEncoder, DINOv2PixelDecoder
from .latent_vit import LatentTokenDecoder, LatentTokenEncoder
from .mamba import (
    MambaMixer,
    causal_conv1d,
    selective_scan,
    selective_scan_reference,
)
from .timm_wrapper import TimmBackbone
from .transformer import TransformerBlock
from .var_transformer import (
    VARFFN,
    AdaLNBeforeHead,
    AdaLNSelfAttn,
    VARSelfAttention,
)
from .vit import ViTDecoder, ViTEncoder

__all__ = [
    'ConvEncoder', 'ConvDecoder', 'ResBlock3d', 'GSCBlock3d', 'Downsample3d',
    'Upsample3d', 'DINOv2LatentEncoder', 'DINOv2PixelDecoder',
    'LatentTokenEncoder', 'LatentTokenDecoder', 'MambaMixer',
    'causal_conv1d', 'selective_scan', 'selective_scan_reference',
    'TimmBackbone', 'TransformerBlock', 'VARSelfAttention', 'VARFFN',
    'AdaLNSelfAttn', 'AdaLNBeforeHead', 'ViTEncoder', 'ViTDecoder'
]
