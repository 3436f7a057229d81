"""Layer-wise learning-rate decay for fine-tuning ViTs (Clark et al. 2020,
ELECTRA; Bao et al. 2022, BEiT §2.4 / appendix; He et al. 2022, MAE
``util/lr_decay.py``; SeiT++ fine-tuning, Lee et al. 2024, which uses MAE's
file unchanged as ``util/lr_decay.py`` with decay 0.65).

The BEiT rule, for a ViT with ``depth`` blocks and
``num_layers = depth + 1``:

* layer 0: the class token, the position embedding and the patch embedding
  (parameter names ``cls_token``, ``pos_embed``, ``patch_embed.*``);
* layer ``i + 1``: block ``i`` (``blocks.i.*``);
* layer ``num_layers``: everything else (final norm, head, ...).

Layer ``l`` trains with ``lr · decay ** (num_layers - l)``: the head with the
full rate, the stem with ``decay ** num_layers`` of it.

SeiT++'s token classifier also has a learned token embedding (indices →
vectors, before the patch embedding). The official ``get_layer_id_for_vit``
does not know it, so it lands in the top layer with the full rate
(tokenunify_seitpp.md B.5, B.9.11); ``token_embedding_layer`` places it in
layer 0 (the default here: it is the input stem) or, to reproduce the
paper's 77.8, ``'top'``.

Weight decay follows MAE's ``param_groups_lrd``: none for 1-D parameters
(biases, norm weights) and for the parameters named in ``no_decay_names``;
the official list is the model's ``no_weight_decay()`` — timm's
``VisionTransformer`` gives ``{'pos_embed', 'cls_token', 'dist_token'}`` —
to which vistok adds ``mask_token`` (a fine-tuned MTM / BEiT model keeps
one). Frozen parameters (``requires_grad=False``, e.g. TokenAdapt's f / g)
are left out of the optimizer, as in MAE.
"""
import copy
import inspect
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch.nn as nn
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper

from vistok.registry import (
    OPTIM_WRAPPER_CONSTRUCTORS,
    OPTIM_WRAPPERS,
    OPTIMIZERS,
)

#: parameters of layer 0 besides the token embedding (BEiT / MAE)
EMBEDDING_NAMES = ('cls_token', 'pos_embed', 'patch_embed')
#: the learned token embedding of a token ViT (SeiT++'s ``token_emb``)
TOKEN_EMBEDDING_NAMES = ('token_embed', )
#: parameters without weight decay besides the 1-D ones (timm ViT's
#: ``no_weight_decay()`` and a mask token)
NO_DECAY_NAMES = ('cls_token', 'pos_embed', 'dist_token', 'mask_token')
TOKEN_EMBEDDING_LAYERS = (0, 'top')
PARAMWISE_KEYS = ('layer_decay_rate', 'prefix', 'block_name',
                  'embedding_names', 'token_embedding_names',
                  'token_embedding_layer', 'no_decay_names')


def name_matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether ``name`` is one of ``patterns`` or lies inside one (a dotted
    prefix: ``patch_embed`` matches ``patch_embed.proj.weight``, not
    ``patch_embed_norm.weight``)."""
    return any(name == p or name.startswith(p + '.') for p in patterns)


def layer_scales(decay: float, num_layers: int) -> List[float]:
    """``decay ** (num_layers - l)`` for ``l = 0 .. num_layers`` (MAE's
    ``layer_scales``)."""
    return [decay**(num_layers - layer) for layer in range(num_layers + 1)]


class LayerDecayRule:
    """Layer id and weight-decay choice of each parameter name (see the
    module docstring); names are relative to the model, ``prefix`` selects
    the ViT inside it."""

    def __init__(self, num_blocks: int, prefix: str = '',
                 block_name: str = 'blocks',
                 embedding_names: Sequence[str] = EMBEDDING_NAMES,
                 token_embedding_names: Sequence[str] = TOKEN_EMBEDDING_NAMES,
                 token_embedding_layer: Union[int, str] = 0,
                 no_decay_names: Sequence[str] = NO_DECAY_NAMES):
        if token_embedding_layer not in TOKEN_EMBEDDING_LAYERS or isinstance(
                token_embedding_layer, bool):
            raise ValueError(
                f'paramwise_cfg.token_embedding_layer must be one of '
                f'{TOKEN_EMBEDDING_LAYERS}, got {token_embedding_layer!r}')
        self.num_layers = num_blocks + 1
        self.prefix = prefix
        self.block_name = block_name
        self.embedding_names = tuple(embedding_names)
        self.token_embedding_names = tuple(token_embedding_names)
        self.token_embedding_layer = (0 if token_embedding_layer == 0 else
                                      self.num_layers)
        self.no_decay_names = tuple(no_decay_names)

    def _relative(self, name: str) -> Optional[str]:
        """``name`` inside the ViT, ``None`` if it lies outside."""
        if not name.startswith(self.prefix):
            return None
        return name[len(self.prefix):]

    def layer_id(self, name: str) -> int:
        """The layer of parameter ``name``."""
        rel = self._relative(name)
        if rel is None:
            return self.num_layers
        if name_matches(rel, self.token_embedding_names):
            return self.token_embedding_layer
        if name_matches(rel, self.embedding_names):
            return 0
        if rel.startswith(self.block_name + '.'):
            index = rel[len(self.block_name) + 1:].split('.', 1)[0]
            if not index.isdigit() or int(index) >= self.num_layers - 1:
                raise ValueError(
                    f'parameter {name!r}: expected {self.prefix}'
                    f'{self.block_name}.<i>.* with i < {self.num_layers - 1}'
                    f' (paramwise_cfg.block_name / prefix)')
            return int(index) + 1
        return self.num_layers

    def decays(self, name: str, param: nn.Parameter) -> bool:
        """Whether parameter ``name`` gets weight decay (MAE: not 1-D, not
        listed)."""
        rel = self._relative(name)
        listed = rel is not None and name_matches(rel, self.no_decay_names)
        return param.ndim > 1 and not listed


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor:
    """One optimizer wrapper whose parameter groups carry layer-wise decayed
    learning rates (the BEiT rule of the module docstring).

    ``optim_wrapper = dict(constructor='LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=4e-3, weight_decay=0.05),
    paramwise_cfg=dict(layer_decay_rate=0.65))``.

    Each group (one per layer and decay / no-decay, ordered from the top
    layer down, so the ``lr`` mmengine logs — the first group's — is the full
    rate) holds ``lr = optimizer.lr · scale`` (the already decayed rate),
    ``weight_decay``, ``lr_scale`` and ``layer_id``. mmengine's parameter
    schedulers multiply each group's own initial ``lr``, so they keep the
    ratios; for MAE's cosine to a minimum (``min_lr`` scaled per layer too),
    give ``CosineAnnealingLR`` an ``eta_min_ratio`` rather than an absolute
    ``eta_min``. ``auto_scale_lr`` scales every group alike.

    ``paramwise_cfg`` keys:
        layer_decay_rate: the decay (SeiT++ README: 0.65; MAE's script
            default 0.75), in (0, 1].
        prefix: path of the ViT inside the model with a trailing dot (e.g.
            ``'backbone.'``; default ``''``); parameters outside it (a head
            of the algorithm) are top-layer.
        block_name: the ``nn.ModuleList`` of blocks (``'blocks'``); its
            length is ``depth``.
        embedding_names: layer-0 names (:data:`EMBEDDING_NAMES`).
        token_embedding_names: names of the learned token embedding
            (:data:`TOKEN_EMBEDDING_NAMES`).
        token_embedding_layer: ``0`` (default) or ``'top'`` (the official
            code's, which SeiT++'s 77.8 used).
        no_decay_names: names without weight decay besides the 1-D
            parameters (:data:`NO_DECAY_NAMES`).

    Names match exactly or as a dotted prefix, relative to ``prefix``.
    ``optimizer.weight_decay`` is required (torch optimizers disagree on its
    default).
    """

    def __init__(self, optim_wrapper_cfg: dict,
                 paramwise_cfg: Optional[dict] = None):
        if not isinstance(optim_wrapper_cfg, dict):
            raise TypeError(f'optim_wrapper must be a dict, got '
                            f'{type(optim_wrapper_cfg)}')
        if 'optimizer' not in optim_wrapper_cfg:
            raise KeyError('optim_wrapper needs an `optimizer` config')
        paramwise_cfg = dict(paramwise_cfg or {})
        unknown = sorted(set(paramwise_cfg) - set(PARAMWISE_KEYS))
        if unknown:
            raise KeyError(f'LayerDecayOptimWrapperConstructor: unknown '
                           f'paramwise_cfg keys {unknown}; known: '
                           f'{list(PARAMWISE_KEYS)}')
        if 'layer_decay_rate' not in paramwise_cfg:
            raise KeyError('LayerDecayOptimWrapperConstructor needs '
                           'paramwise_cfg.layer_decay_rate')
        rate = paramwise_cfg.pop('layer_decay_rate')
        if not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise ValueError(f'paramwise_cfg.layer_decay_rate must be in '
                             f'(0, 1], got {rate!r}')
        self.optim_wrapper_cfg = copy.deepcopy(optim_wrapper_cfg)
        self.optimizer_cfg = self.optim_wrapper_cfg.pop('optimizer')
        for key in ('lr', 'weight_decay'):
            if key not in self.optimizer_cfg:
                raise KeyError(f'LayerDecayOptimWrapperConstructor needs '
                               f'optim_wrapper.optimizer.{key}')
        self.layer_decay_rate = float(rate)
        self.rule_cfg = paramwise_cfg

    def build_rule(self, model: nn.Module) -> LayerDecayRule:
        """The :class:`LayerDecayRule` of ``model`` (depth from its block
        list)."""
        prefix = self.rule_cfg.get('prefix', '')
        block_name = self.rule_cfg.get('block_name', 'blocks')
        path = (prefix + block_name).strip('.')
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            raise ValueError(
                f'{type(model).__name__} has no {path!r} (paramwise_cfg.'
                f'prefix={prefix!r}, block_name={block_name!r})') from None
        if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
            raise TypeError(f'{path!r} must be an nn.ModuleList of blocks, '
                            f'got {type(blocks).__name__}')
        return LayerDecayRule(len(blocks), **self.rule_cfg)

    def param_groups(self, model: nn.Module) -> List[Dict]:
        """The parameter groups of ``model`` (see the class docstring)."""
        rule = self.build_rule(model)
        scales = layer_scales(self.layer_decay_rate, rule.num_layers)
        base_lr = self.optimizer_cfg['lr']
        weight_decay = self.optimizer_cfg['weight_decay']
        groups: Dict[Tuple[int, bool], Dict] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            layer, decays = rule.layer_id(name), rule.decays(name, param)
            if (layer, decays) not in groups:
                groups[(layer, decays)] = dict(
                    params=[], lr=base_lr * scales[layer],
                    weight_decay=weight_decay if decays else 0.0,
                    lr_scale=scales[layer], layer_id=layer)
            groups[(layer, decays)]['params'].append(param)
        return [groups[key] for key in sorted(groups, reverse=True)]

    def __call__(self, model: nn.Module) -> OptimWrapper:
        if is_model_wrapper(model):
            model = model.module
        optimizer_cfg = copy.deepcopy(self.optimizer_cfg)
        optimizer_cls = optimizer_cfg['type']
        if isinstance(optimizer_cls, str):
            optimizer_cls = OPTIMIZERS.get(optimizer_cls)
            if optimizer_cls is None:
                raise KeyError(f'optim_wrapper.optimizer.type='
                               f'{self.optimizer_cfg["type"]!r} is not a '
                               f'registered optimizer')
        # the first argument is `params` for torch optimizers (mmengine's
        # DefaultOptimWrapperConstructor does the same)
        first_arg = next(iter(inspect.signature(optimizer_cls).parameters))
        optimizer_cfg[first_arg] = self.param_groups(model)
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        wrapper_cfg = dict(self.optim_wrapper_cfg)
        wrapper_cfg.setdefault('type', 'OptimWrapper')
        return OPTIM_WRAPPERS.build(wrapper_cfg,
                                    default_args=dict(optimizer=optimizer))
