from .autoencoder import AutoencoderTokenizer

__all__ = ['AutoencoderTokenizer']
