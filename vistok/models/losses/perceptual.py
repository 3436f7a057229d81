"""Perceptual losses on images ``(B, 3, H, W)`` in ``[-1, 1]``.

* :class:`LPIPS` -- Zhang et al. 2018, "The Unreasonable Effectiveness of
  Deep Features as a Perceptual Metric", eq. 1, with the VGG16 trunk and the
  learned linear heads of the ``lpips`` package (v0.1).
* :class:`PerceptualFeatureLoss` -- a frozen timm network compared on its
  classifier logits (TiTok / MaskGIT: MSE of ConvNeXt-S logits at 224 px) or
  on channel-normalised intermediate feature maps.

Both networks are frozen
(:func:`vistok.models.utils.frozen.freeze_as_buffers`): no parameters,
nothing in the state dict, gradients flow through to ``pred``.
Their weights are read from local files in ``init_weights()`` only, and the
math runs in fp32 under autocast.
"""
import importlib.util
import os.path as osp
import re
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.models.utils.frozen import freeze_as_buffers, load_frozen_weights
from vistok.registry import LOSSES
from vistok.utils.weights import load_state_dict_file, require_file

REDUCTIONS = ('mean', 'sum', 'none')

VGG16_HOW_TO_GET = (
    'Create it on a machine with internet access with `python -c "import '
    'torch, torchvision; torch.save(torchvision.models.vgg16(weights='
    "'IMAGENET1K_V1').state_dict(), 'vgg16_imagenet1k_v1.pth')\"` and set "
    'this key to the file.')
LPIPS_HEADS_HOW_TO_GET = (
    '`pip install lpips` (its wheel ships the learned heads as '
    'lpips/weights/v0.1/vgg.pth, used by default), or set this key to a copy '
    'of that file.')


def _check_loss_name(loss_name: str) -> None:
    if 'loss' not in loss_name:
        raise ValueError(f'loss_name must contain "loss" to be part of the '
                         f'total loss, got {loss_name!r}')


def _check_images(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.dim() != 4 or pred.shape[1] != 3 or pred.shape != target.shape:
        raise ValueError(f'pred and target must both be (B, 3, H, W) RGB '
                         f'images, got {tuple(pred.shape)} and '
                         f'{tuple(target.shape)}')


def lpips_package_heads_file(version: str = 'v0.1',
                             net: str = 'vgg') -> Optional[str]:
    """Path of the learned heads ``weights/{version}/{net}.pth`` shipped in
    the installed ``lpips`` package (located with
    ``importlib.util.find_spec``, without importing it), or ``None`` if
    ``lpips`` is not installed."""
    spec = importlib.util.find_spec('lpips')
    if spec is None or not spec.submodule_search_locations:
        return None
    package_dir = list(spec.submodule_search_locations)[0]
    return osp.join(package_dir, 'weights', version, f'{net}.pth')


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features`` (randomly initialised, without
    building the classifier), with torchvision's layer indices so that
    ``features.N.*`` checkpoint keys map onto it."""
    from torchvision.models.vgg import cfgs, make_layers
    return make_layers(cfgs['D'], batch_norm=False)


@LOSSES.register_module()
class LPIPS(nn.Module):
    """Learned Perceptual Image Patch Similarity (Zhang et al. 2018, eq. 1)

    ``d(x, x0) = Σ_l mean_hw ‖w_l ⊙ (ŷ_l - ŷ0_l)‖²``,

    where ``ŷ_l`` are the VGG16 activations at relu1_2, relu2_2, relu3_3,
    relu4_3 and relu5_3 of the scaled input ``(x - shift) / scale``,
    unit-normalised along channels, and ``w_l`` the learned non-negative
    1×1 linear heads. Numerically the ``lpips`` package's
    ``LPIPS(net='vgg', version='0.1')``.

    The VGG16 trunk and the heads are frozen: built randomly here and loaded
    in :meth:`init_weights`, the only method that reads files.

    Args:
        trunk_path: torchvision VGG16 state dict (keys ``features.N.weight``
            / ``features.N.bias``; other keys such as the classifier's are
            ignored). See ``VGG16_HOW_TO_GET``.
        heads_path: the ``lpips`` heads file (keys
            ``lin{k}.model.1.weight``, shapes ``(1, C_k, 1, 1)``); ``None``
            takes ``weights/v0.1/vgg.pth`` of the installed ``lpips``
            package.
        shift, scale: per-channel input scaling of LPIPS v0.1 (the ImageNet
            statistics expressed for inputs in ``[-1, 1]``).
        taps: indices in ``vgg16().features`` whose outputs are compared
            (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
        channels: channel count at each tap (width of each linear head).
        eps: added to the channel norm before dividing by it.
        loss_weight: multiplier of the reduced loss.
        reduction: ``'mean'`` or ``'sum'`` over the batch, or ``'none'``
            (per-sample distances, shape ``(B,)``).
        loss_name: name under which an algorithm logs this term.
    """

    def __init__(self,
                 trunk_path: Optional[str] = None,
                 heads_path: Optional[str] = None,
                 shift: Tuple[float, ...] = (-0.030, -0.088, -0.188),
                 scale: Tuple[float, ...] = (0.458, 0.448, 0.450),
                 taps: Tuple[int, ...] = (3, 8, 15, 22, 29),
                 channels: Tuple[int, ...] = (64, 128, 256, 512, 512),
                 eps: float = 1e-10,
                 loss_weight: float = 1.0,
                 reduction: str = 'mean',
                 loss_name: str = 'loss_lpips'):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f'reduction must be one of {REDUCTIONS}, '
                             f'got {reduction!r}')
        _check_loss_name(loss_name)
        if len(taps) != len(channels):
            raise ValueError(f'taps {taps} and channels {channels} must '
                             'have the same length')
        self.trunk_path = trunk_path
        self.heads_path = heads_path
        self.taps = tuple(taps)
        self.eps = eps
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.loss_name = loss_name
        self.register_buffer('shift',
                             torch.tensor(shift).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer('scale',
                             torch.tensor(scale).view(1, -1, 1, 1),
                             persistent=False)
        self.trunk = freeze_as_buffers(vgg16_features()[:max(self.taps) + 1])
        self.heads = freeze_as_buffers(
            nn.ModuleList(
                nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in channels))

    def weight_files(self) -> Tuple[str, str]:
        """``(trunk file, heads file)``; raises
        :class:`~vistok.utils.weights.MissingWeightsError` (config key
        ``trunk_path`` or ``heads_path``) if either is missing. Reads
        nothing."""
        trunk = require_file(self.trunk_path, 'trunk_path', VGG16_HOW_TO_GET)
        heads_path = self.heads_path
        if heads_path is None:
            heads_path = lpips_package_heads_file()
        heads = require_file(heads_path, 'heads_path', LPIPS_HEADS_HOW_TO_GET)
        return trunk, heads

    def init_weights(self) -> None:
        """Load the VGG16 trunk and the linear heads from their files."""
        trunk_file, heads_file = self.weight_files()
        trunk = load_state_dict_file(trunk_file, 'trunk_path',
                                     VGG16_HOW_TO_GET)
        trunk = {
            name[len('features.'):]: value
            for name, value in trunk.items() if name.startswith('features.')
        }
        load_frozen_weights(self.trunk, trunk, trunk_file)
        heads = load_state_dict_file(heads_file, 'heads_path',
                                     LPIPS_HEADS_HOW_TO_GET)
        pattern = re.compile(r'lin(\d+)\.model\.1\.weight')
        heads = {
            f'{match.group(1)}.weight': value
            for name, value in heads.items()
            if (match := pattern.fullmatch(name))
        }
        load_frozen_weights(self.heads, heads, heads_file)

    def features(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Channel-normalised VGG16 activations at ``taps`` of ``images``
        ``(B, 3, H, W)`` in ``[-1, 1]``."""
        x = (images - self.shift) / self.scale
        outputs = []
        for index, layer in enumerate(self.trunk):
            x = layer(x)
            if index in self.taps:
                norm = x.pow(2).sum(dim=1, keepdim=True).sqrt()
                outputs.append(x / (norm + self.eps))
        return tuple(outputs)

    def distance(self, pred: torch.Tensor,
                 target: torch.Tensor) -> torch.Tensor:
        """Per-sample LPIPS ``(B,)`` of ``pred`` and ``target``
        ``(B, 3, H, W)`` in ``[-1, 1]``, computed in fp32."""
        _check_images(pred, target)
        with torch.autocast(device_type=pred.device.type, enabled=False):
            pred_feats = self.features(pred.float())
            target_feats = self.features(target.float())
            return sum(
                head((p - t).pow(2)).mean(dim=(1, 2, 3))
                for head, p, t in zip(self.heads, pred_feats, target_feats))

    def forward(self, pred: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        """``loss_weight`` × reduced :meth:`distance`."""
        loss = self.distance(pred, target)
        if self.reduction == 'mean':
            loss = loss.mean()
        elif self.reduction == 'sum':
            loss = loss.sum()
        return self.loss_weight * loss


@LOSSES.register_module()
class PerceptualFeatureLoss(nn.Module):
    """Distance between a frozen timm network's outputs for two images.

    Inputs ``(B, 3, H, W)`` in ``[-1, 1]`` are mapped to ``[0, 1]``, resized
    to ``resize × resize`` (bilinear, antialiased, ``align_corners=False``,
    as TiTok does) and normalised with the network's mean / std. Then

    * ``mode='logits'``: ``MSE(f(pred), f(target))`` of the classifier
      logits -- the perceptual loss of TiTok (Yu et al. 2024) and MaskGIT's
      VQGAN training: ConvNeXt-S logits at 224 px. TiTok uses torchvision's
      ``convnext_small`` IMAGENET1K_V1 weights; the closest timm weights are
      ``model_name='convnext_small.fb_in1k'``.
    * ``mode='features'``: the mean over the feature levels ``out_indices``
      (timm ``forward_intermediates``, the levels of ``features_only``) of
      the MSE (``distance='mse'``) or L1 (``distance='l1'``) between
      channel-normalised feature maps ``f / (‖f‖_C + eps)``.

    The target branch runs without gradient. The network is frozen, built
    randomly here and loaded in :meth:`init_weights`.

    Args:
        model_name: timm model name (with an optional pretrained tag, which
            selects the default mean / std).
        weights_path: ``timm.create_model(model_name,
            pretrained=True).state_dict()`` saved to a file.
        mode: ``'logits'`` or ``'features'``.
        resize: side of the square input of the network; ``None`` keeps the
            input size.
        out_indices: feature levels compared in ``'features'`` mode (indices
            of the model's ``feature_info``); ``None`` takes all of them.
        distance: ``'mse'`` or ``'l1'`` between feature maps
            (``'features'`` mode; logits are always compared by MSE).
        mean, std: input normalisation; ``None`` takes the model's
            ``pretrained_cfg`` values.
        eps: added to the channel norm of feature maps.
        model_kwargs: extra keyword arguments of ``timm.create_model``.
        loss_weight: multiplier of the loss.
        loss_name: name under which an algorithm logs this term.
    """

    MODES = ('logits', 'features')
    DISTANCES = ('mse', 'l1')

    def __init__(self,
                 model_name: str = 'convnext_small',
                 weights_path: Optional[str] = None,
                 mode: str = 'logits',
                 resize: Optional[int] = 224,
                 out_indices: Optional[Sequence[int]] = None,
                 distance: str = 'mse',
                 mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None,
                 eps: float = 1e-10,
                 model_kwargs: Optional[Dict] = None,
                 loss_weight: float = 1.0,
                 loss_name: str = 'loss_perceptual'):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f'mode must be one of {self.MODES}, got {mode!r}')
        if distance not in self.DISTANCES:
            raise ValueError(f'distance must be one of {self.DISTANCES}, '
                             f'got {distance!r}')
        _check_loss_name(loss_name)
        import timm
        model = timm.create_model(model_name,
                                  pretrained=False,
                                  **(model_kwargs or {}))
        if mode == 'features' and not hasattr(model, 'forward_intermediates'):
            raise ValueError(f'mode="features" needs a timm model with '
                             f'forward_intermediates; {model_name!r} has none')
        mean = model.pretrained_cfg['mean'] if mean is None else mean
        std = model.pretrained_cfg['std'] if std is None else std
        self.model = freeze_as_buffers(model)
        self.model_name = model_name
        self.weights_path = weights_path
        self.mode = mode
        self.resize = resize
        self.out_indices = None if out_indices is None else list(out_indices)
        self.distance = distance
        self.eps = eps
        self.loss_weight = loss_weight
        self.loss_name = loss_name
        self.register_buffer('mean',
                             torch.tensor(mean).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer('std',
                             torch.tensor(std).view(1, -1, 1, 1),
                             persistent=False)

    @property
    def how_to_get(self) -> str:
        return ('Create it on a machine with internet access with `python -c '
                '"import timm, torch; torch.save(timm.create_model('
                f"'{self.model_name}', pretrained=True).state_dict(), "
                f"'{self.model_name}.pth')\"` and set this key to the file.")

    def init_weights(self) -> None:
        """Load the timm network from ``weights_path``."""
        state = load_state_dict_file(self.weights_path, 'weights_path',
                                     self.how_to_get)
        load_frozen_weights(self.model, state, self.weights_path)

    def network_input(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` in ``[-1, 1]`` → resized, normalised network input."""
        x = (images + 1) / 2
        if self.resize is not None:
            x = F.interpolate(x,
                              size=(self.resize, self.resize),
                              mode='bilinear',
                              align_corners=False,
                              antialias=True)
        return (x - self.mean) / self.std

    def outputs(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Logits ``((B, classes),)`` or channel-normalised feature maps
        ``(B, C_l, h_l, w_l)`` of ``images`` in ``[-1, 1]``."""
        x = self.network_input(images)
        if self.mode == 'logits':
            return (self.model(x), )
        feats = self.model.forward_intermediates(x,
                                                 indices=self.out_indices,
                                                 stop_early=True,
                                                 intermediates_only=True)
        return tuple(f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps)
                     for f in feats)

    def forward(self, pred: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of ``pred`` against ``target``, both
        ``(B, 3, H, W)`` in ``[-1, 1]``."""
        _check_images(pred, target)
        with torch.autocast(device_type=pred.device.type, enabled=False):
            pred_out = self.outputs(pred.float())
            with torch.no_grad():
                target_out = self.outputs(target.float())
            if self.mode == 'features' and self.distance == 'l1':
                terms = [F.l1_loss(p, t) for p, t in zip(pred_out, target_out)]
            else:
                terms = [
                    F.mse_loss(p, t) for p, t in zip(pred_out, target_out)
                ]
            return self.loss_weight * sum(terms) / len(terms)
