"""EMmamba: the volumetric segmentation / reconstruction network of
TokenUnify (Chen et al., "TokenUnify: Scaling Up Autoregressive Pretraining
for Neuron Segmentation", arXiv 2405.16847, §3 and Fig. 2), a SegMamba
variant (Xing et al. 2024, "SegMamba: Long-range Sequential Modeling Mamba
for 3D Medical Image Segmentation") with anisotropic kernels for EM stacks.

``(B, in_channels, D, H, W) -> (B, out_channels, D, H, W)`` logits:

* **Encoder** (:class:`EMMambaEncoder`), one stage per ``feat_size`` entry.
  A stem ``Conv3d(in, C0, (1, 7, 7), stride 2, padding (0, 3, 3))``, then
  between stages ``InstanceNorm + Conv3d(Ci, Ci+1, (1, 2, 2), stride 2)``:
  every stage halves D, H and W (the released code downsamples z too), so
  D, H and W must be divisible by ``2 ** len(feat_size)`` (16). Each stage
  is a GSC block (:class:`~vistok.models.backbones.conv3d.GSCBlock3d`),
  ``depths[i]`` :class:`EMMambaLayer` s (LayerNorm → tri-oriented Mamba,
  no residual, no MLP) and, for the skip output only, InstanceNorm + a
  channel MLP (1×1×1 conv C→2C, GELU, 2C→C).
* **Decoder**: MONAI's ``UnetrBasicBlock`` / ``UnetrUpBlock`` with
  ``res_block=True`` and ``norm_name='instance'``, the blocks the official
  ``src/segmamba.py`` builds (:func:`unetr_basic_block`,
  :func:`unetr_up_block`). ``skip_blocks[0]`` (official ``encoder1``) is a
  residual block on the raw input (in → C0), ``skip_blocks[i + 1]``
  (``encoder{i+2}``) maps the stage-``i`` skip Ci → Ci+1 and the last one
  (``encoder5``) the last skip to ``hidden_size``; ``up_blocks``
  (``decoder5`` .. ``decoder2``) go back to C0 at full resolution;
  ``decoder1`` is a last residual block and ``final_conv`` the 1×1×1
  output conv with bias (official ``out``, MONAI's ``UnetOutBlock``, which
  is this ``nn.Conv3d`` inside two wrappers: kept plain so the head is
  ``final_conv.weight`` / ``.bias``, the keys the pre-train → fine-tune
  configs name; swap it to change the head). No sigmoid.

Deliberate choices, each a keyword argument:

* ``legacy_num_slices=None``: the inter-slice scan cuts the sequence into
  as many chunks as the stage's z-depth (SegMamba's intent), so it scans
  along z at every in-plane position. The released TokenUnify code leaves
  ``nslices`` at Mamba's default 5 at every stage (its per-stage value is
  commented out), which aligns with no z-slice and needs every stage's
  ``D·H·W`` to be divisible by 5; ``legacy_num_slices=5`` reproduces it.
* ``mamba_residual=False``: as released, the Mamba layers have no residual
  connection (SegMamba adds ``x +``); ``True`` adds it.
* ``kernel_size=(1, 5, 5)``: the decoder kernels of the fine-tuning network
  and of every model size; the autoregressive pre-training network of the
  release uses ``(1, 3, 3)`` (and depths ``(3, 3, 3, 3)``). Pre-train and
  fine-tune with the same values, or weights cannot transfer.

The five sizes of the release (``arch``) and their parameter counts are in
:data:`ARCH_SETTINGS` (reproduced to 0.02%, which also pins the decoder's
channels: ``encoder{i+2}`` maps Ci → Ci+1, not Ci → Ci).

Official parameter names → these (the rules of
``vistok/apis/converters/tokenunify_emmamba.py``; InstanceNorms have no
parameters): ``vit.downsample_layers.0.0`` → ``encoder.downsamples.0.conv``,
``vit.downsample_layers.{i}.1`` → ``encoder.downsamples.{i}.conv``;
``vit.gscs`` → ``encoder.gscs`` and ``vit.stages`` → ``encoder.stages``
(same names below); ``vit.mlps`` → ``encoder.skip_mlps``; ``encoder{k}`` →
``skip_blocks.{k-1}``; ``decoder{k}`` → ``up_blocks.{5-k}``; ``decoder1``
→ ``decoder1``; ``out.conv.conv`` → ``final_conv``. Inside the MONAI
blocks the names are MONAI's on both sides (``layer.conv1.conv.weight``,
``conv_block.conv3.conv.weight``, ``transp_conv.conv.weight``, ...).

vistok checkpoints written before the decoder used MONAI's blocks named
the same tensors without MONAI's wrappers (``skip_blocks.{i}.conv1.weight``
→ now ``skip_blocks.{i}.layer.conv1.conv.weight``, ``shortcut.0`` →
``conv3.conv``, ``up_blocks.{i}.conv_block.conv1.weight`` →
``up_blocks.{i}.conv_block.conv1.conv.weight``); values and shapes are
unchanged, so :func:`rename_legacy_decoder_keys` maps such a state dict.
"""
import re
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrUpBlock

from vistok.models.backbones.conv3d import (
    Downsample3d,
    GSCBlock3d,
    Size3,
    check_volume,
)
from vistok.models.backbones.mamba import MambaMixer
from vistok.registry import BACKBONES

#: ``arch`` → channels per stage ``feat_size`` and decoder bottleneck
#: ``hidden_size``; ``params`` is the count the authors give (millions,
#: comments of the release's ``models_mamba.py``), which
#: ``EMMamba(arch=...)`` reproduces with ``depths=(2, 2, 2, 2)``,
#: ``kernel_size=(1, 5, 5)`` and ``out_channels=3``.
ARCH_SETTINGS = {
    'base': dict(feat_size=(32, 64, 128, 256), hidden_size=512,
                 params=28.3),
    'small': dict(feat_size=(64, 128, 256, 512), hidden_size=1024,
                  params=112.53),
    'mid': dict(feat_size=(96, 192, 384, 768), hidden_size=1024,
                params=206.58),
    'large': dict(feat_size=(144, 288, 576, 1104), hidden_size=2048,
                  params=506.57),
    'huge': dict(feat_size=(192, 384, 768, 1536), hidden_size=3072,
                 params=1008.91),
}

#: SegMamba's tri-oriented Mamba ("bimamba v3")
TRI_ORIENTED = ('forward', 'backward', 'inter_slice')
#: MONAI norm of the official decoder blocks (``norm_name="instance"`` in
#: ``SegMamba.__init__``, src/segmamba.py): InstanceNorm, affine=False
NORM_NAME = 'instance'


class EMMambaLayer(nn.Module):
    """``(B, C, D, H, W) -> (B, C, D, H, W)``: LayerNorm over channels, then
    a tri-oriented :class:`~vistok.models.backbones.mamba.MambaMixer` over
    the ``D·H·W`` positions (z slowest).

    Args:
        channels: channels ``C``.
        num_slices: inter-slice chunks; ``None`` = the input's ``D``.
        residual: add the input to the output (SegMamba); TokenUnify as
            released has no residual.
        mamba_cfg: keyword arguments of ``MambaMixer`` (``d_state``,
            ``d_conv``, ``expand``, ``impl``, ...).
    """

    def __init__(self,
                 channels: int,
                 num_slices: Optional[int] = None,
                 residual: bool = False,
                 mamba_cfg: Optional[dict] = None):
        super().__init__()
        self.residual = residual
        self.norm = nn.LayerNorm(channels)
        self.mamba = MambaMixer(
            channels,
            directions=TRI_ORIENTED,
            num_slices=num_slices,
            **(mamba_cfg or {}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mamba(self.norm(x.movedim(1, -1)).movedim(-1, 1))
        return out + x if self.residual else out


class ChannelMLP3d(nn.Module):
    """``(B, C, *) -> (B, C, *)``: 1×1×1 conv C → ``ratio``·C, GELU, back to
    C (SegMamba's ``MlpChannel``)."""

    def __init__(self, channels: int, ratio: int = 2):
        super().__init__()
        self.fc1 = nn.Conv3d(channels, ratio * channels, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv3d(ratio * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def unetr_basic_block(in_channels: int, out_channels: int,
                      kernel_size: Size3) -> UnetrBasicBlock:
    """MONAI's ``UnetrBasicBlock(res_block=True, norm_name='instance')``,
    as the official ``segmamba.py`` builds ``encoder1`` .. ``encoder5`` and
    ``decoder1`` (stride 1): a ``UnetResBlock``, conv-IN-LeakyReLU(0.01)-
    conv-IN plus the input (through a 1×1×1 conv + IN when the channels
    differ), then LeakyReLU; bias-free convs, InstanceNorms without affine
    parameters. ``(B, C_in, *spatial) -> (B, C_out, *spatial)``."""
    return UnetrBasicBlock(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernel_size,
        stride=1,
        norm_name=NORM_NAME,
        res_block=True)


def unetr_up_block(in_channels: int, out_channels: int, kernel_size: Size3,
                   upsample_kernel_size: Size3) -> UnetrUpBlock:
    """MONAI's ``UnetrUpBlock(res_block=True, norm_name='instance')`` (the
    official ``decoder5`` .. ``decoder2``): ``(B, C_in, D, H, W)`` and a skip
    ``(B, C_out, D·s, H·s, W·s)`` → a bias-free transposed conv (kernel =
    stride = ``upsample_kernel_size``) to ``C_out``, concatenation ``[up,
    skip]`` and the residual block of :func:`unetr_basic_block` from
    ``2·C_out`` to ``C_out``; called as ``block(x, skip)``."""
    return UnetrUpBlock(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernel_size,
        upsample_kernel_size=upsample_kernel_size,
        norm_name=NORM_NAME,
        res_block=True)


@BACKBONES.register_module()
class EMMambaEncoder(nn.Module):
    """The Mamba encoder of EMmamba (module docstring):
    ``(B, in_channels, D, H, W)`` → one skip per stage, stage ``i`` being
    ``(B, feat_size[i], D / 2^(i+1), H / 2^(i+1), W / 2^(i+1))``.

    Args:
        in_channels: input channels (1 for EM).
        feat_size: channels of each stage.
        depths: Mamba layers per stage.
        stem_kernel_size, stem_padding: the stem conv (stride 2 on every
            axis).
        downsample_kernel_size: the conv between stages (stride 2 on every
            axis).
        gsc_kernel_size: kernel of the GSC block's spatial convs.
        mlp_ratio: hidden width of the skip channel MLP, in channels.
        legacy_num_slices: ``None`` = inter-slice scan over each stage's
            z-depth; an int = that many chunks at every stage (5 in the
            released code).
        mamba_residual: residual around each Mamba layer.
        mamba_cfg: ``MambaMixer`` keyword arguments; default ``d_state=16,
            d_conv=4, expand=2``.
    """

    def __init__(self,
                 in_channels: int = 1,
                 feat_size: Sequence[int] = (32, 64, 128, 256),
                 depths: Sequence[int] = (2, 2, 2, 2),
                 stem_kernel_size: Size3 = (1, 7, 7),
                 stem_padding: Union[int, Sequence[int]] = (0, 3, 3),
                 downsample_kernel_size: Size3 = (1, 2, 2),
                 gsc_kernel_size: Size3 = 3,
                 mlp_ratio: int = 2,
                 legacy_num_slices: Optional[int] = None,
                 mamba_residual: bool = False,
                 mamba_cfg: Optional[dict] = None):
        super().__init__()
        feat_size, depths = tuple(feat_size), tuple(depths)
        if not feat_size or len(depths) != len(feat_size):
            raise ValueError(f'depths must give one number of Mamba layers '
                             f'per stage of feat_size; got feat_size='
                             f'{feat_size}, depths={depths}')
        mamba_cfg = dict(dict(d_state=16, d_conv=4, expand=2),
                         **(mamba_cfg or {}))
        self.in_channels = in_channels
        self.feat_size = feat_size
        self.downsamples = nn.ModuleList([
            Downsample3d(in_channels, feat_size[0], stride=2,
                         kernel_size=stem_kernel_size,
                         padding=stem_padding)
        ] + [
            Downsample3d(c_in, c_out, stride=2,
                         kernel_size=downsample_kernel_size, pre_norm=True)
            for c_in, c_out in zip(feat_size[:-1], feat_size[1:])
        ])
        self.gscs = nn.ModuleList(
            GSCBlock3d(c, kernel_size=gsc_kernel_size) for c in feat_size)
        self.stages = nn.ModuleList(
            nn.Sequential(*[
                EMMambaLayer(c, legacy_num_slices, mamba_residual, mamba_cfg)
                for _ in range(depth)
            ]) for c, depth in zip(feat_size, depths))
        self.skip_norms = nn.ModuleList(
            nn.InstanceNorm3d(c) for c in feat_size)
        self.skip_mlps = nn.ModuleList(
            ChannelMLP3d(c, mlp_ratio) for c in feat_size)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        check_volume(x, self.in_channels, type(self).__name__)
        skips = []
        for down, gsc, stage, norm, mlp in zip(self.downsamples, self.gscs,
                                               self.stages, self.skip_norms,
                                               self.skip_mlps):
            x = stage(gsc(down(x)))
            skips.append(mlp(norm(x)))
        return tuple(skips)


@BACKBONES.register_module()
class EMMamba(nn.Module):
    """EMmamba, ``(B, in_channels, D, H, W) -> (B, out_channels, D, H,
    W)`` logits (module docstring; no final sigmoid). D, H and W must be
    divisible by ``2 ** len(feat_size)``.

    Args:
        arch: ``'base'`` (28.3M, the EMmamba of TokenUnify's Table 1),
            ``'small'`` (the "100M"), ``'mid'`` ("200M"), ``'large'``
            ("500M") or ``'huge'`` ("1B"), see :data:`ARCH_SETTINGS`; or
            ``None`` to give ``feat_size`` and ``hidden_size``.
        in_channels: input channels (1 for EM).
        out_channels: output channels of ``final_conv`` (1 for voxel
            reconstruction in pre-training, 3 for affinities).
        feat_size: channels per encoder stage (overrides ``arch``'s).
        hidden_size: channels of the bottleneck block (overrides
            ``arch``'s).
        depths: Mamba layers per stage.
        kernel_size: kernel of the decoder's residual blocks, ``(1, 5, 5)``
            (``(1, 3, 3)`` in the release's autoregressive pre-training
            network).
        upsample_kernel_size: kernel = stride of the transposed convs.
        legacy_num_slices, mamba_residual, mamba_cfg, stem_kernel_size,
        stem_padding, downsample_kernel_size, gsc_kernel_size, mlp_ratio:
            see :class:`EMMambaEncoder`.
    """

    def __init__(self,
                 arch: Optional[str] = 'base',
                 in_channels: int = 1,
                 out_channels: int = 3,
                 feat_size: Optional[Sequence[int]] = None,
                 hidden_size: Optional[int] = None,
                 depths: Sequence[int] = (2, 2, 2, 2),
                 kernel_size: Size3 = (1, 5, 5),
                 upsample_kernel_size: Size3 = 2,
                 legacy_num_slices: Optional[int] = None,
                 mamba_residual: bool = False,
                 mamba_cfg: Optional[dict] = None,
                 stem_kernel_size: Size3 = (1, 7, 7),
                 stem_padding: Union[int, Sequence[int]] = (0, 3, 3),
                 downsample_kernel_size: Size3 = (1, 2, 2),
                 gsc_kernel_size: Size3 = 3,
                 mlp_ratio: int = 2):
        super().__init__()
        if arch is not None and arch not in ARCH_SETTINGS:
            raise ValueError(f'arch must be one of {tuple(ARCH_SETTINGS)} '
                             f'or None, got {arch!r}')
        setting = ARCH_SETTINGS[arch] if arch is not None else {}
        feat_size = feat_size if feat_size is not None else setting.get(
            'feat_size')
        hidden_size = hidden_size if hidden_size is not None else \
            setting.get('hidden_size')
        if feat_size is None or hidden_size is None:
            raise ValueError('arch=None needs both feat_size and hidden_size')
        feat_size = tuple(feat_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.feat_size, self.hidden_size = feat_size, hidden_size
        self.size_divisor = 2**len(feat_size)
        self.encoder = EMMambaEncoder(
            in_channels,
            feat_size,
            depths,
            stem_kernel_size=stem_kernel_size,
            stem_padding=stem_padding,
            downsample_kernel_size=downsample_kernel_size,
            gsc_kernel_size=gsc_kernel_size,
            mlp_ratio=mlp_ratio,
            legacy_num_slices=legacy_num_slices,
            mamba_residual=mamba_residual,
            mamba_cfg=mamba_cfg)
        skip_channels = (in_channels, ) + feat_size
        block_channels = feat_size + (hidden_size, )
        self.skip_blocks = nn.ModuleList(
            unetr_basic_block(c_in, c_out, kernel_size)
            for c_in, c_out in zip(skip_channels, block_channels))
        self.up_blocks = nn.ModuleList(
            unetr_up_block(c_in, c_out, kernel_size, upsample_kernel_size)
            for c_in, c_out in zip(block_channels[:0:-1],
                                   block_channels[-2::-1]))
        self.decoder1 = unetr_basic_block(feat_size[0], feat_size[0],
                                          kernel_size)
        self.final_conv = nn.Conv3d(feat_size[0], out_channels, 1)

    def check_input(self, x: torch.Tensor) -> None:
        """``x`` must be ``(B, in_channels, D, H, W)`` with D, H and W
        divisible by :attr:`size_divisor`."""
        check_volume(x, self.in_channels, type(self).__name__)
        if any(size % self.size_divisor for size in x.shape[2:]):
            raise ValueError(
                f'{type(self).__name__} halves D, H and W '
                f'{len(self.feat_size)} times, so each must be divisible by '
                f'{self.size_divisor}; got input shape {tuple(x.shape)}')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, D, H, W)`` → ``(B, out_channels, D, H, W)``
        logits."""
        self.check_input(x)
        inputs = (x, ) + self.encoder(x)
        skips = [block(f) for block, f in zip(self.skip_blocks, inputs)]
        h = skips[-1]
        for up, skip in zip(self.up_blocks, reversed(skips[:-1])):
            h = up(h, skip)
        return self.final_conv(self.decoder1(h))


#: ``(pattern, replacement)`` from the decoder keys of vistok checkpoints
#: written before the MONAI blocks to MONAI's names (module docstring)
LEGACY_DECODER_KEYS = (
    (r'(.*(?:skip_blocks\.\d+|decoder1))\.(conv1|conv2)\.weight',
     r'\1.layer.\2.conv.weight'),
    (r'(.*(?:skip_blocks\.\d+|decoder1))\.shortcut\.0\.weight',
     r'\1.layer.conv3.conv.weight'),
    (r'(.*up_blocks\.\d+\.conv_block)\.(conv1|conv2)\.weight',
     r'\1.\2.conv.weight'),
    (r'(.*up_blocks\.\d+\.conv_block)\.shortcut\.0\.weight',
     r'\1.conv3.conv.weight'),
)


def rename_legacy_decoder_keys(
        state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A state dict of an :class:`EMMamba` (or of a model holding one, any
    key prefix) saved before the decoder used MONAI's blocks, with its
    decoder keys renamed to the current ones (:data:`LEGACY_DECODER_KEYS`);
    other keys and all tensors are kept."""
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in LEGACY_DECODER_KEYS:
            new_key, count = re.subn(f'^{pattern}$', replacement, key)
            if count:
                key = new_key
                break
        renamed[key] = value
    return renamed


__all__ = [
    'ARCH_SETTINGS', 'EMMamba', 'EMMambaEncoder', 'EMMambaLayer',
    'ChannelMLP3d', 'unetr_basic_block', 'unetr_up_block',
    'LEGACY_DECODER_KEYS', 'rename_legacy_decoder_keys'
]
