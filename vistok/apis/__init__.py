from .reconstruct import find_images, input_size, reconstruct_files
from .runner import apply_cli_options, build_runner, enable_amp
from .tokenize import detokenize, load_tokenizer, tokenize

__all__ = [
    'apply_cli_options', 'build_runner', 'enable_amp', 'load_tokenizer',
    'tokenize', 'detokenize', 'find_images', 'input_size', 'reconstruct_files'
]
