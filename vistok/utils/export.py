"""Export a checkpoint's model weights (or its EMA weights) to safetensors:
a vistok checkpoint file or a sharded (FSDP) checkpoint directory, whose
shards are consolidated into whole tensors."""
import torch
from safetensors.torch import save_file

from .checkpoint import load_checkpoint_file
from .dcp import check_complete, consolidate, is_sharded_checkpoint


def extract_weights(checkpoint, ema=False, ema_prefix='ema.'):
    """The model tensors of a loaded checkpoint, without its EMA copy.

    With ``ema=True`` the averaged weights replace the model's weights of the
    same name, so the result loads into the model like the raw weights: the
    model's own EMA copy (``state_dict`` keys starting with ``ema_prefix``,
    e.g. ``ema.encoder.conv_in.weight`` for ``encoder.conv_in.weight``; its
    bookkeeping such as ``ema.num_updates`` is dropped), or mmengine
    ``EMAHook``'s ``ema_state_dict`` (keys prefixed ``module.``). A missing
    EMA is an error, never a silent fallback.
    """
    if not isinstance(checkpoint, dict):
        raise ValueError(f'expected a checkpoint dict, got {type(checkpoint)}')
    state = checkpoint.get('state_dict', checkpoint)
    weights = {k: v for k, v in state.items() if not k.startswith(ema_prefix)}
    if not ema:
        return weights
    if 'ema_state_dict' in checkpoint:
        averaged = {k[len('module.'):]: v
                    for k, v in checkpoint['ema_state_dict'].items()
                    if k.startswith('module.')}
    else:
        averaged = {k[len(ema_prefix):]: v for k, v in state.items()
                    if k.startswith(ema_prefix)}
    averaged = {k: v for k, v in averaged.items() if k in weights}
    if not averaged:
        raise KeyError(f'the checkpoint has no EMA weights: no '
                       f'`ema_state_dict` and no state_dict key starting with '
                       f'{ema_prefix!r} that matches a model weight')
    weights.update(averaged)
    return weights


def export_safetensors(checkpoint_path, out_path, ema=False,
                       ema_prefix='ema.'):
    """Load ``checkpoint_path`` (a file, or a sharded checkpoint directory
    written by any number of ranks) safely and write its weights to
    ``out_path``. Returns the number of tensors written."""
    if is_sharded_checkpoint(checkpoint_path):
        check_complete(checkpoint_path)
        checkpoint = dict(state_dict=consolidate(checkpoint_path))
    else:
        checkpoint = load_checkpoint_file(checkpoint_path,
                                          map_location='cpu')
    weights = extract_weights(checkpoint, ema=ema, ema_prefix=ema_prefix)
    tensors = {k: v.contiguous() for k, v in weights.items()
               if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f'{checkpoint_path} holds no weight tensors')
    save_file(tensors, out_path, metadata={'source': str(checkpoint_path),
                                           'ema': str(bool(ema))})
    return len(tensors)
