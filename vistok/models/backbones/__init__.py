from .conv import ConvDecoder, ConvEncoder

__all__ = ['ConvEncoder', 'ConvDecoder']
