"""Image feature extractors for FID / IS / KID (``FEATURE_EXTRACTORS``).

Every extractor has one interface:

* ``forward(images)``: uint8 ``(B, 3, H, W)`` RGB images →
  ``dict(features=(B, feature_dim) float32, logits=(B, num_classes) float32)``
  (``logits`` only when ``num_classes > 0``); the extractor resizes to its
  ``input_size`` itself with its ``resize_filter``;
* ``name``, ``feature_dim``, ``num_classes``, ``input_size``,
  ``resize_filter`` and ``weights_sha256`` (SHA-256 of the loaded weights
  file, ``'random-init'`` for a fixed random network, ``None`` until
  ``init_weights()`` ran) — the fields of an FID protocol fingerprint;
* ``init_weights()`` loads ``weights_path`` (constructors never read files,
  DESIGN §6); ``check_weights()`` raises
  :class:`~vistok.utils.weights.MissingWeightsError` (key ``weights_path``)
  early when the file is missing.

Pretrained networks are frozen
(:func:`vistok.models.utils.frozen.freeze_as_buffers`): always in eval mode, no
parameters, nothing in ``state_dict()``.
"""
import math
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import (
    BasicConv2d,
    FeatureExtractorInceptionV3,
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE_1,
    InceptionE_2,
)

from vistok.models.utils.frozen import freeze_as_buffers, load_frozen_weights
from vistok.registry import FEATURE_EXTRACTORS
from vistok.utils.fileio import sha256_file
from vistok.utils.weights import load_state_dict_file, require_file

TORCH_FIDELITY_INCEPTION_URL = (
    'https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/'
    'weights-inception-2015-12-05-6726825d.pth')
PYTORCH_FID_INCEPTION_URL = (
    'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
    'pt_inception-2015-12-05-6726825d.pth')


def check_uint8_images(images: torch.Tensor, who: str) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or \
            images.shape[1] != 3:
        raise ValueError(f'{who} expects uint8 (B, 3, H, W) images, got '
                         f'{images.dtype} of shape {tuple(images.shape)}')


class FeatureExtractor(nn.Module):
    """Base of vistok's feature extractors (the interface in the module
    docstring). Subclasses set the attributes and implement ``forward``;
    those with a file set ``weights_path`` and ``how_to_get`` and implement
    ``_load(state_dict)``."""

    name: str
    feature_dim: int
    num_classes: int = 0
    input_size: int
    resize_filter: str
    how_to_get: str = ''

    def __init__(self, weights_path: Optional[str] = None):
        super().__init__()
        self.weights_path = weights_path
        self.weights_sha256: Optional[str] = None

    def check_weights(self) -> None:
        """Raise ``MissingWeightsError`` (key ``weights_path``) if the
        weights file is missing."""
        require_file(self.weights_path, 'weights_path', self.how_to_get)

    def init_weights(self) -> None:
        """Load ``weights_path`` and record its SHA-256."""
        path = require_file(self.weights_path, 'weights_path',
                            self.how_to_get)
        self._load(load_state_dict_file(path, 'weights_path',
                                        self.how_to_get))
        self.weights_sha256 = sha256_file(path)

    def _load(self, state_dict: Dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def _check_ready(self, images: torch.Tensor) -> None:
        check_uint8_images(images, type(self).__name__)
        if self.weights_sha256 is None:
            raise RuntimeError(f'{type(self).__name__}: call init_weights() '
                               f'to load {self.weights_path!r} before use')


def _load_inception(net: nn.Module, state_dict: Dict[str, torch.Tensor],
                    source: str) -> None:
    """Fill a frozen Inception; BatchNorm's ``num_batches_tracked`` counters
    (unused in eval mode, absent from some converted files) may be missing."""
    state = {name: tensor for name, tensor in net.named_buffers()
             if name.endswith('num_batches_tracked')}
    state.update(state_dict)
    load_frozen_weights(net, state, source)


class _InceptionV3Net(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception-v3 (its blocks and its ``forward``) built
    with random weights instead of downloading / unpickling a file.

    Its tensors are named like pytorch-fid's ``pt_inception`` file
    (torchvision's ``inception_v3(num_classes=1008, aux_logits=False)``):
    ``Conv2d_1a_3x3 … Mixed_7c``, ``fc``. The blocks are the TensorFlow-FID
    variants (Heusel et al. 2017's graph): average pools exclude padding
    (``count_include_pad=False``), ``Mixed_7c`` pools with a max.
    """

    TRUNK = ('Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3', 'MaxPool_1',
             'Conv2d_3b_1x1', 'Conv2d_4a_3x3', 'MaxPool_2', 'Mixed_5b',
             'Mixed_5c', 'Mixed_5d', 'Mixed_6a', 'Mixed_6b', 'Mixed_6c',
             'Mixed_6d', 'Mixed_6e', 'Mixed_7a', 'Mixed_7b', 'Mixed_7c',
             'AvgPool')

    def __init__(self, features_list=('2048', 'logits_unbiased')):
        FeatureExtractorBase.__init__(self, 'inception-v3-compat',
                                      list(features_list))
        self.feature_extractor_internal_dtype = torch.float32
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE_1(1280)
        self.Mixed_7c = InceptionE_2(2048)
        self.AvgPool = nn.AdaptiveAvgPool2d(output_size=(1, 1))
        self.fc = nn.Linear(2048, 1008)

    def pool_features(self, x: torch.Tensor) -> torch.Tensor:
        """2048-d pool3 features of normalised ``(B, 3, 299, 299)`` input."""
        for name in self.TRUNK:
            x = getattr(self, name)(x)
        return torch.flatten(x, 1)


class _InceptionExtractor(FeatureExtractor):
    """A frozen :class:`_InceptionV3Net` filled from ``weights_path``."""

    def __init__(self, weights_path: Optional[str] = None):
        super().__init__(weights_path)
        self.net = freeze_as_buffers(_InceptionV3Net())

    def _load(self, state_dict):
        _load_inception(self.net, state_dict, self.weights_path)


@FEATURE_EXTRACTORS.register_module()
class InceptionV3Compat(_InceptionExtractor):
    """torch-fidelity's ``inception-v3-compat`` (the TF-FID Inception-v3).

    ``forward`` is torch-fidelity 0.4's own: TF1.x-compatible bilinear
    resize to 299, ``(x - 128) / 128``, 2048-d pool3 ``features`` and the
    1008-way ``logits`` without the fc bias (``logits_unbiased``, as the
    original Inception Score code). Unlike torch-fidelity it never downloads
    and reads the file with safe loading, in ``init_weights()``.

    Args:
        weights_path: ``weights-inception-2015-12-05-6726825d.pth``.
    """

    name = 'inception-v3-compat'
    feature_dim = 2048
    num_classes = 1008
    input_size = 299
    resize_filter = 'bilinear-tf1x'
    how_to_get = (
        'On a machine with internet access download '
        f'{TORCH_FIDELITY_INCEPTION_URL} (torch-fidelity\'s converted '
        'TF Inception, file weights-inception-2015-12-05-6726825d.pth), copy '
        'it to this machine and set weights_path to it.')

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """uint8 ``(B, 3, H, W)`` → ``features (B, 2048)``,
        ``logits (B, 1008)``."""
        self._check_ready(images)
        features, logits = self.net(images)
        return dict(features=features, logits=logits)


@FEATURE_EXTRACTORS.register_module()
class PytorchFIDInception(_InceptionExtractor):
    """pytorch-fid's Inception-v3 (``pt_inception-2015-12-05``), the network
    behind TiTok / MARVEL rFID.

    The same TF-FID network as :class:`InceptionV3Compat` with pytorch-fid's
    input pipeline: ``x / 255``, ``F.interpolate`` to 299 (bilinear,
    ``align_corners=False``, no antialias), ``2x - 1``; ``features`` are the
    2048-d pool3 output, ``logits`` the 1008-way fc without bias (the
    Inception Score convention).

    Args:
        weights_path: ``pt_inception-2015-12-05-6726825d.pth``.
    """

    name = 'pt_inception-2015-12-05'
    feature_dim = 2048
    num_classes = 1008
    input_size = 299
    resize_filter = 'bilinear'
    how_to_get = (
        'On a machine with internet access download '
        f'{PYTORCH_FID_INCEPTION_URL} (pytorch-fid\'s FID Inception, file '
        'pt_inception-2015-12-05-6726825d.pth), copy it to this machine and '
        'set weights_path to it.')

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """uint8 ``(B, 3, H, W)`` → ``features (B, 2048)``,
        ``logits (B, 1008)``."""
        self._check_ready(images)
        x = images.float() / 255
        x = F.interpolate(x, size=(self.input_size, self.input_size),
                          mode='bilinear', align_corners=False)
        features = self.net.pool_features(2 * x - 1)
        return dict(features=features,
                    logits=features @ self.net.fc.weight.T)


@FEATURE_EXTRACTORS.register_module()
class RandomConvFeatures(FeatureExtractor):
    """A tiny fixed random conv net for tests and demos (no file).

    ``x / 127.5 - 1`` → bilinear resize to ``input_size`` → two stride-2
    3×3 convs with ReLU → spatial mean (``features``) → a linear map
    (``logits``). Weights are ``N(0, 1/fan_in)`` from ``seed``, so every
    instance with the same arguments computes the same function. Keep
    ``feature_dim`` below the image count, or the covariance is singular.

    Args:
        feature_dim: feature width ``D``.
        num_classes: logit count for IS (0: no logits).
        hidden_channels: width of the first conv.
        input_size: side length images are resized to.
        seed: seed of the weights.
    """

    resize_filter = 'bilinear'

    def __init__(self, feature_dim: int = 16, num_classes: int = 10,
                 hidden_channels: int = 8, input_size: int = 32,
                 seed: int = 0):
        super().__init__(weights_path=None)
        self.feature_dim, self.num_classes = feature_dim, num_classes
        self.input_size = input_size
        self.name = (f'random-conv-{hidden_channels}x{feature_dim}-'
                     f'{num_classes}cls-{input_size}px-seed{seed}')
        self.conv1 = nn.Conv2d(3, hidden_channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(hidden_channels, feature_dim, 3, stride=2,
                               padding=1)
        self.head = (nn.Linear(feature_dim, num_classes, bias=False)
                     if num_classes else None)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in self.parameters():
                fan_in = param[0].numel() if param.dim() > 1 else param.numel()
                param.copy_(torch.randn(param.shape, generator=generator) /
                            math.sqrt(fan_in))
        freeze_as_buffers(self)
        self.weights_sha256 = 'random-init'

    def check_weights(self) -> None:
        """Nothing to check: the weights come from ``seed``."""

    def init_weights(self) -> None:
        """Nothing to load: the weights come from ``seed``."""

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """uint8 ``(B, 3, H, W)`` → ``features (B, D)`` [, ``logits``]."""
        self._check_ready(images)
        x = images.float() / 127.5 - 1
        x = F.interpolate(x, size=(self.input_size, self.input_size),
                          mode='bilinear', align_corners=False)
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        features = x.mean(dim=(2, 3))
        out = dict(features=features)
        if self.head is not None:
            out['logits'] = self.head(features)
        return out


def torch_fidelity_extractor(cfg: dict) -> type:
    """A torch-fidelity ``FeatureExtractorBase`` subclass wrapping the vistok
    extractor built from ``cfg`` (features ``'features'`` for FID / KID,
    ``'logits'`` for IS), to register with
    ``torch_fidelity.register_feature_extractor(name, cls)`` so that
    ``torch_fidelity.calculate_metrics`` runs the very same network (for
    cross-checks and benchmarks)."""

    class VistokExtractor(FeatureExtractorBase):

        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.extractor = FEATURE_EXTRACTORS.build(cfg)
            self.extractor.init_weights()

        @staticmethod
        def get_provided_features_list():
            return 'features', 'logits'

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return 'logits' if metric == 'isc' else 'features'

        @staticmethod
        def can_be_compiled():
            return False

        def forward(self, images):
            out = self.extractor(images)
            return tuple(out[name] for name in self.features_list)

    return VistokExtractor
