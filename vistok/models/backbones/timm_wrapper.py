"""Any timm model as a vistok backbone, with weights from a local file.

The network is built by name with random weights (``pretrained=False``:
nothing is downloaded) and filled from ``weights_path`` in
:meth:`TimmBackbone.init_weights`. When the configured model's image size
or patch size differs from the checkpoint's (ImageFolder re-creates DINOv2
ViT-B/14, trained at 518 px, at 256 px with patch 16), the checkpoint is
resampled while loading, as timm does for its own pretrained weights:

* absolute position embeddings (``pos_embed``) with timm's
  ``resample_abs_pos_embed`` (bicubic interpolation of the grid part; the
  class / register tokens' entries are kept);
* patch-embedding kernels (``*patch_embed.proj.weight``) with timm's
  ``resample_patch_embed`` (FlexiViT, Beyer et al. 2023: the
  pseudo-inverse of the bicubic resize, so that a resized patch gives the
  same token as the original patch did).
"""
import inspect
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from vistok.models.utils.frozen import freeze_as_buffers, load_frozen_weights
from vistok.registry import BACKBONES
from vistok.utils.weights import load_state_dict_file

Features = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


def timm_weights_hint(model_name: str) -> str:
    """How to obtain the local weights file of the timm model
    ``model_name`` (for :class:`~vistok.utils.weights.MissingWeightsError`)."""
    return ('Create it on a machine with internet access with `python -c '
            '"import timm, torch; torch.save(timm.create_model('
            f"'{model_name}', pretrained=True).state_dict(), "
            f"'{model_name}.pth')\"` (or download model.safetensors "
            f'of the Hugging Face repo timm/{model_name}) and set '
            'this key to the file.')


def resample_timm_state_dict(
        model: nn.Module,
        state: Dict[str, torch.Tensor],
        model_name: str = 'the model',
        source: Optional[str] = 'the checkpoint',
        checkpoint_grid_size: Optional[Sequence[int]] = None,
        interpolation: str = 'bicubic',
        antialias: bool = True) -> Dict[str, torch.Tensor]:
    """``state`` with ``pos_embed`` and patch-embedding kernels resampled
    to the shapes of the timm ``model`` (timm's ``resample_abs_pos_embed``
    / ``resample_patch_embed``); entries ``model`` lacks are passed
    through, any other tensor whose shape differs is an error naming it.

    Args:
        model: the timm model the state dict will be loaded into.
        state: the checkpoint's state dict (not modified).
        model_name, source: names of the model and of the checkpoint
            file, for the error message.
        checkpoint_grid_size: ``(h, w)`` token grid of the checkpoint's
            position embeddings; ``None`` infers a square grid.
        interpolation, antialias: of the resampling.
    """
    from timm.layers import resample_abs_pos_embed, resample_patch_embed
    own = dict(model.named_parameters())
    own.update(model.named_buffers())
    out = dict(state)
    for name, value in state.items():
        target = own.get(name)
        if target is None or target.shape == value.shape:
            continue
        if name == 'pos_embed' and value.dim() == 3:
            prefix = (0 if getattr(model, 'no_embed_class', False) else
                      model.num_prefix_tokens)
            out[name] = resample_abs_pos_embed(
                value,
                new_size=list(model.patch_embed.grid_size),
                old_size=(None if checkpoint_grid_size is None else
                          list(checkpoint_grid_size)),
                num_prefix_tokens=prefix,
                interpolation=interpolation,
                antialias=antialias)
        elif (name.endswith('patch_embed.proj.weight')
              and value.shape[:2] == target.shape[:2]):
            out[name] = resample_patch_embed(value,
                                             list(target.shape[-2:]),
                                             interpolation=interpolation,
                                             antialias=antialias)
        else:
            raise ValueError(f'{source}: {name} has shape '
                             f'{tuple(value.shape)}, {model_name} '
                             f'expects {tuple(target.shape)} and only '
                             f'pos_embed / patch_embed.proj.weight are '
                             f'resampled')
    return out


def load_timm_state_dict(model: nn.Module,
                         state: Dict[str, torch.Tensor],
                         model_name: str = 'the model',
                         source: Optional[str] = 'the checkpoint') -> None:
    """Copy every tensor of ``model``'s state dict from ``state`` (already
    resampled: :func:`resample_timm_state_dict`). Entries ``model`` does
    not have (a pruned classifier, a removed patch embedding) are ignored;
    a missing entry is a ``KeyError`` naming ``source`` and examples."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise KeyError(f'{source} lacks {len(missing)} tensors of '
                       f'{model_name}, e.g. {missing[:5]}')
    model.load_state_dict({name: state[name] for name in own})


@BACKBONES.register_module()
class TimmBackbone(nn.Module):
    """Features of chosen blocks of a timm model, as channel-first grids.

    ``forward(images (B, C, H, W))`` returns, for each of ``out_indices``,
    the ``(B, C_f, h, w)`` feature grid of that block (timm's
    ``forward_intermediates``; prefix tokens such as the class and register
    tokens are dropped). With ``keep_prefix_tokens`` each output is a pair
    ``(grid, prefix)`` with ``prefix`` of shape ``(B, C_f, num_prefix)``.
    An int ``out_indices`` gives one output, a sequence a tuple of outputs.
    Blocks after the last requested one, the classifier head and (without
    ``norm``) the final norm are removed at construction (timm's
    ``prune_intermediate_layers``), so every parameter is used.

    Inputs go to the network as they are: normalise them as the checkpoint
    expects (``self.model.pretrained_cfg['mean' | 'std']``).

    Args:
        model_name: timm architecture, with an optional pretrained tag
            (``'vit_base_patch14_dinov2.lvd142m'``).
        weights_path: local file with the model's timm state dict (``.pth``
            / ``.safetensors``), loaded by :meth:`init_weights`; ``None``
            keeps the random initialisation (not allowed when ``frozen``).
            Entries the pruned model does not have (later blocks, the
            classifier) are ignored; missing entries are an error.
        model_kwargs: extra ``timm.create_model`` arguments, e.g.
            ``dict(img_size=256, patch_size=16, drop_path_rate=0.1)``.
        out_indices: block index (negative counts from the end) or indices.
        norm: apply the model's final norm to every output.
        keep_prefix_tokens: also return the prefix tokens (ViTs only).
        frozen: freeze the network (:func:`freeze_as_buffers`: no
            parameters, not in the state dict, gradients still flow to the
            input).
        checkpoint_grid_size: ``(h, w)`` token grid of the checkpoint's
            position embeddings; ``None`` infers a square grid.
        resample_interpolation: interpolation mode of the resampling.
        resample_antialias: antialiased interpolation when downsampling.
    """

    def __init__(self,
                 model_name: str,
                 weights_path: Optional[str] = None,
                 model_kwargs: Optional[Dict] = None,
                 out_indices: Union[int, Sequence[int]] = -1,
                 norm: bool = False,
                 keep_prefix_tokens: bool = False,
                 frozen: bool = False,
                 checkpoint_grid_size: Optional[Sequence[int]] = None,
                 resample_interpolation: str = 'bicubic',
                 resample_antialias: bool = True):
        super().__init__()
        import timm  # imported here: importing vistok stays cheap
        model = timm.create_model(model_name,
                                  pretrained=False,
                                  **(model_kwargs or {}))
        if not hasattr(model, 'forward_intermediates'):
            raise ValueError(f'{model_name!r} has no forward_intermediates '
                             f'in timm {timm.__version__}; TimmBackbone '
                             f'needs it to return chosen blocks')
        if keep_prefix_tokens and 'return_prefix_tokens' not in \
                inspect.signature(model.forward_intermediates).parameters:
            raise ValueError(f'keep_prefix_tokens=True needs a ViT-like '
                             f'model with prefix tokens; {model_name!r} '
                             f'has none')
        self.single_output = isinstance(out_indices, int)
        indices = [out_indices] if self.single_output else list(out_indices)
        self.out_indices = model.prune_intermediate_layers(indices,
                                                           prune_norm=not norm,
                                                           prune_head=True)
        self.model = freeze_as_buffers(model) if frozen else model
        self.model_name = model_name
        self.weights_path = weights_path
        self.norm = norm
        self.keep_prefix_tokens = keep_prefix_tokens
        self.frozen = frozen
        self.checkpoint_grid_size = (None if checkpoint_grid_size is None else
                                     list(checkpoint_grid_size))
        self.resample_interpolation = resample_interpolation
        self.resample_antialias = resample_antialias

    @property
    def how_to_get(self) -> str:
        return timm_weights_hint(self.model_name)

    def init_weights(self) -> None:
        """Load ``weights_path``, resampled to this model's image and patch
        size (:meth:`resample_state_dict`)."""
        if self.weights_path is None and not self.frozen:
            return
        state = load_state_dict_file(self.weights_path, 'weights_path',
                                     self.how_to_get)
        state = self.resample_state_dict(state)
        if self.frozen:
            load_frozen_weights(self.model, state, self.weights_path)
            return
        load_timm_state_dict(self.model, state, self.model_name,
                             self.weights_path)

    def resample_state_dict(
            self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``state`` with ``pos_embed`` and patch-embedding kernels resampled
        to this model's shapes (timm's ``resample_abs_pos_embed`` /
        ``resample_patch_embed``); any other tensor whose shape differs is
        an error naming it."""
        return resample_timm_state_dict(
            self.model,
            state,
            self.model_name,
            self.weights_path,
            checkpoint_grid_size=self.checkpoint_grid_size,
            interpolation=self.resample_interpolation,
            antialias=self.resample_antialias)

    def forward(self,
                images: torch.Tensor) -> Union[Features, Tuple[Features, ...]]:
        kwargs = dict(return_prefix_tokens=True) \
            if self.keep_prefix_tokens else {}
        features = self.model.forward_intermediates(images,
                                                    indices=self.out_indices,
                                                    norm=self.norm,
                                                    output_fmt='NCHW',
                                                    intermediates_only=True,
                                                    **kwargs)
        if self.keep_prefix_tokens:
            features = [(grid, prefix.transpose(1, 2))
                        for grid, prefix in features]
        return features[0] if self.single_output else tuple(features)
