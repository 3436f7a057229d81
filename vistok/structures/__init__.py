from .data_sample import DataSample
from .outputs import QuantizerOutput, TokenizerOutput

__all__ = ['DataSample', 'QuantizerOutput', 'TokenizerOutput']
