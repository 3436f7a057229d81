"""Export a checkpoint's model weights (or its EMA weights) to safetensors."""
import torch
from safetensors.torch import save_file

from .checkpoint import load_checkpoint_file


def extract_weights(checkpoint, ema=False, ema_prefix='ema.'):
    """The model (or EMA) tensors of a loaded checkpoint.

    With ``ema=True``: mmengine ``EMAHook``'s ``ema_state_dict`` (its
    ``module.`` prefix removed) if present, else the model's own EMA copy,
    i.e. the ``state_dict`` keys starting with ``ema_prefix`` (prefix
    removed). A missing EMA is an error, never a silent fallback.
    """
    if not isinstance(checkpoint, dict):
        raise ValueError(f'expected a checkpoint dict, got {type(checkpoint)}')
    state = checkpoint.get('state_dict', checkpoint)
    if not ema:
        return {k: v for k, v in state.items() if not k.startswith(ema_prefix)}
    if 'ema_state_dict' in checkpoint:
        return {k[len('module.'):]: v
                for k, v in checkpoint['ema_state_dict'].items()
                if k.startswith('module.')}
    weights = {k[len(ema_prefix):]: v for k, v in state.items()
               if k.startswith(ema_prefix)}
    if not weights:
        raise KeyError(f'the checkpoint has no EMA weights: no '
                       f'`ema_state_dict` and no state_dict key starting with '
                       f'{ema_prefix!r}')
    return weights


def export_safetensors(checkpoint_path, out_path, ema=False,
                       ema_prefix='ema.'):
    """Load ``checkpoint_path`` safely and write its weights to
    ``out_path``. Returns the number of tensors written."""
    checkpoint = load_checkpoint_file(checkpoint_path, map_location='cpu')
    weights = extract_weights(checkpoint, ema=ema, ema_prefix=ema_prefix)
    tensors = {k: v.contiguous() for k, v in weights.items()
               if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f'{checkpoint_path} holds no weight tensors')
    save_file(tensors, out_path, metadata={'source': str(checkpoint_path),
                                           'ema': str(bool(ema))})
    return len(tensors)
