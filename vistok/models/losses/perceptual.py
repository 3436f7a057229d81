"""Perceptual losses on images ``(B, 3, H, W)`` in ``[-1, 1]``.

* :class:`LPIPS` -- Zhang et al. 2018, "The Unreasonable Effectiveness of
  Deep Features as a Perceptual Metric", eq. 1, with the VGG16 trunk and the
  learned linear heads of the ``lpips`` package (v0.1).
* :class:`PerceptualFeatureLoss` -- a frozen timm or torchvision network
  compared on its classifier logits (TiTok / MaskGIT: MSE of torchvision's
  ConvNeXt-S logits at 224 px) or on channel-normalised intermediate feature
  maps (timm).

Each declares the ``pixel_range`` its network sees (before its own input
normalisation); the ``[-1, 1]`` inputs are mapped onto it once
(:func:`~vistok.models.losses.reconstruction.to_pixel_range`).

Both networks are frozen
(:func:`vistok.models.utils.frozen.freeze_as_buffers`): no parameters,
nothing in the state dict, gradients flow through to ``pred``.
Their weights are read from local files in ``init_weights()`` only, and the
math runs in fp32 under autocast.
"""
import importlib.util
import os.path as osp
import re
import string
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.models.losses.reconstruction import (
    TOKENIZER_PIXEL_RANGE,
    check_pixel_range,
    to_pixel_range,
)
from vistok.models.utils.frozen import freeze_as_buffers, load_frozen_weights
from vistok.registry import LOSSES
from vistok.utils.fileio import sha256_file
from vistok.utils.weights import load_state_dict_file, require_file

REDUCTIONS = ('mean', 'sum', 'none')
#: where :class:`PerceptualFeatureLoss` finds its architecture
LIBRARIES = ('timm', 'torchvision')
#: ImageNet mean / std of torchvision's classifier weights (their
#: ``transforms()``; TiTok's ``_IMAGENET_MEAN`` / ``_IMAGENET_STD`` in
#: ``modeling/modules/perceptual_loss.py``), for inputs in [0, 1]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: torch.hub names weight files ``<name>-<first 8 hex digits of their
#: sha256>.pth``: the shortest digest prefix a config may give
MIN_SHA256_PREFIX = 8

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


def check_sha256(path: str, expected: Optional[str], key: str) -> None:
    """Check the file ``path`` against ``expected``: its full sha256 or a
    prefix of at least :data:`MIN_SHA256_PREFIX` hex digits (torch.hub's
    file-name hash, checked the way ``torch.hub.download_url_to_file``
    checks it). ``None`` checks nothing. A ``ValueError`` names the file,
    the config ``key`` and both digests."""
    if expected is None:
        return
    expected = expected.lower()
    if (len(expected) < MIN_SHA256_PREFIX or len(expected) > 64
            or set(expected) - set(string.hexdigits.lower())):
        raise ValueError(f'{key} must be a sha256 or a prefix of at least '
                         f'{MIN_SHA256_PREFIX} hex digits, got {expected!r}')
    actual = sha256_file(path)
    if not actual.startswith(expected):
        raise ValueError(f'{path} has sha256 {actual}, which does not start '
                         f'with {expected} (config key `{key}`): a '
                         f'different or damaged file')


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
        pixel_range: range the trunk's input (before ``shift`` /
            ``scale``) is in; LPIPS v0.1 is defined on ``[-1, 1]`` (the
            ``lpips`` package with ``normalize=False``; TiTok's copy,
            ``modeling/modules/lpips.py``, maps its ``[0, 1]`` inputs to
            ``[-1, 1]`` itself), the default.
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
                 pixel_range: Sequence[float] = TOKENIZER_PIXEL_RANGE,
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
        self.pixel_range = check_pixel_range(pixel_range)
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
        ``(B, 3, H, W)`` in ``[-1, 1]`` (mapped onto ``pixel_range``)."""
        x = (to_pixel_range(images, self.pixel_range) - self.shift) / \
            self.scale
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
    """Distance between a frozen classifier's outputs for two images.

    Inputs ``(B, 3, H, W)`` in ``[-1, 1]`` are mapped onto ``pixel_range``
    (``[0, 1]``), resized to ``resize × resize`` (bilinear, antialiased,
    ``align_corners=False``) and normalised with ``mean`` / ``std``. Then

    * ``mode='logits'``: ``MSE(f(pred), f(target))`` of the classifier
      logits -- the perceptual loss of TiTok (Yu et al. 2024) and MaskGIT's
      VQGAN training. TiTok (bytedance/1d-tokenizer
      ``modeling/modules/perceptual_loss.py``,
      ``PerceptualLoss('convnext_s')``) uses torchvision's
      ``convnext_small(weights=IMAGENET1K_V1)`` on ``[0, 1]`` images
      resized as above to 224 px and normalised with the ImageNet mean /
      std: ``library='torchvision'``, ``model_name='convnext_small'``, the
      defaults otherwise. (timm's ``convnext_small.fb_in1k`` is a
      different set of weights.)
    * ``mode='features'`` (timm only): the mean over the feature levels
      ``out_indices`` (timm ``forward_intermediates``, the levels of
      ``features_only``) of the MSE (``distance='mse'``) or L1
      (``distance='l1'``) between channel-normalised feature maps
      ``f / (‖f‖_C + eps)``.

    The target branch runs without gradient. The network is frozen, built
    randomly here (``timm.create_model`` / ``torchvision.models.get_model``
    with ``weights=None``) and loaded in :meth:`init_weights`.

    Args:
        model_name: timm model name (with an optional pretrained tag, which
            selects the default mean / std) or torchvision model name.
        weights_path: the network's state dict: for timm
            ``timm.create_model(model_name, pretrained=True).state_dict()``
            saved to a file; for torchvision the weights file torchvision
            downloads (e.g. ``convnext_small-0c510722.pth``), which is a
            state dict of the torchvision model.
        weights_sha256: the file's sha256, or a prefix of at least
            :data:`MIN_SHA256_PREFIX` hex digits (torch.hub's file-name
            hash); checked in :meth:`init_weights` when given.
        library: ``'timm'`` or ``'torchvision'``: where the architecture
            (and the meaning of the weights file) comes from.
        mode: ``'logits'`` or ``'features'``.
        resize: side of the square input of the network; ``None`` keeps the
            input size.
        out_indices: feature levels compared in ``'features'`` mode (indices
            of the model's ``feature_info``); ``None`` takes all of them.
        distance: ``'mse'`` or ``'l1'`` between feature maps
            (``'features'`` mode; logits are always compared by MSE).
        mean, std: input normalisation (for images in ``pixel_range``);
            ``None`` takes the timm model's ``pretrained_cfg`` values, or
            torchvision's ImageNet :data:`IMAGENET_MEAN` /
            :data:`IMAGENET_STD`.
        pixel_range: ``(low, high)`` range the network's input is in before
            ``mean`` / ``std``: ``(0, 1)`` for ImageNet classifiers (timm,
            torchvision, TiTok).
        eps: added to the channel norm of feature maps.
        model_kwargs: extra keyword arguments of ``timm.create_model`` /
            ``torchvision.models.get_model``.
        loss_weight: multiplier of the loss.
        loss_name: name under which an algorithm logs this term.
    """

    MODES = ('logits', 'features')
    DISTANCES = ('mse', 'l1')

    def __init__(self,
                 model_name: str = 'convnext_small',
                 weights_path: Optional[str] = None,
                 weights_sha256: Optional[str] = None,
                 library: str = 'timm',
                 mode: str = 'logits',
                 resize: Optional[int] = 224,
                 out_indices: Optional[Sequence[int]] = None,
                 distance: str = 'mse',
                 mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None,
                 pixel_range: Sequence[float] = (0.0, 1.0),
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
        if library not in LIBRARIES:
            raise ValueError(f'library must be one of {LIBRARIES}, got '
                             f'{library!r}')
        _check_loss_name(loss_name)
        if library == 'timm':
            import timm
            model = timm.create_model(model_name,
                                      pretrained=False,
                                      **(model_kwargs or {}))
            default_mean = model.pretrained_cfg['mean']
            default_std = model.pretrained_cfg['std']
        else:
            if mode == 'features':
                raise ValueError('mode="features" needs library="timm" '
                                 '(forward_intermediates)')
            import torchvision
            model = torchvision.models.get_model(model_name,
                                                 weights=None,
                                                 **(model_kwargs or {}))
            default_mean, default_std = IMAGENET_MEAN, IMAGENET_STD
        if mode == 'features' and not hasattr(model, 'forward_intermediates'):
            raise ValueError(f'mode="features" needs a timm model with '
                             f'forward_intermediates; {model_name!r} has none')
        mean = default_mean if mean is None else mean
        std = default_std if std is None else std
        self.model = freeze_as_buffers(model)
        self.model_name = model_name
        self.weights_path = weights_path
        self.weights_sha256 = weights_sha256
        self.library = library
        self.mode = mode
        self.resize = resize
        self.out_indices = None if out_indices is None else list(out_indices)
        self.distance = distance
        self.pixel_range = check_pixel_range(pixel_range)
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
        if self.library == 'torchvision':
            return (f"Download torchvision's ImageNet weights file of "
                    f'{self.model_name!r} (its URL: `python -c "import '
                    f"torchvision; print(torchvision.models."
                    f"get_model_weights('{self.model_name}')."
                    f'IMAGENET1K_V1.url)"`, e.g. https://download.pytorch.'
                    f'org/models/convnext_small-0c510722.pth) and set this '
                    f'key to the file.')
        return ('Create it on a machine with internet access with `python -c '
                '"import timm, torch; torch.save(timm.create_model('
                f"'{self.model_name}', pretrained=True).state_dict(), "
                f"'{self.model_name}.pth')\"` and set this key to the file.")

    def init_weights(self) -> None:
        """Load the network from ``weights_path`` after checking
        ``weights_sha256`` (when given)."""
        path = require_file(self.weights_path, 'weights_path',
                            self.how_to_get)
        check_sha256(path, self.weights_sha256, 'weights_sha256')
        state = load_state_dict_file(path, 'weights_path', self.how_to_get)
        load_frozen_weights(self.model, state, path)

    def network_input(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` in ``[-1, 1]`` → ``pixel_range``, resized,
        normalised network input."""
        x = to_pixel_range(images, self.pixel_range)
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
