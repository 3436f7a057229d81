"""An independent reference of TokenAdapt's f and g as released with SeiT++
(Lee et al., ECCV 2024, arXiv 2312.10105), written for the converter test
from the module definitions of naver-ai/tokenadapt at commit
4e7a3be (CC BY-NC: facts only, no code taken):

* ``models.py`` ``TokenVisionTransformer.__init__``:
  ``conversion_function = Sequential(Linear(32, 384), ViTDecoder(
  image_size=64, patch_size=2, dim=384, depth=1, heads=6, mlp_dim=384*4,
  channels=32))`` and ``reverse_transform = Sequential(ViTEncoder(
  image_size=56, patch_size=2, dim=384, depth=1, heads=6, mlp_dim=384*4,
  channels=32), Linear(384, 391))`` (``dim_head`` left at 64);
* ``forward_conversion(x)``: ``x.flatten(2).transpose(1, 2)`` (``BCHW ->
  BNC``), then ``conversion_function`` -> ``(B, 32, 64, 64)``;
* ``forward_inversion(x)``: ``reverse_transform`` -> ``(B, N, 391)``,
  ``argmax(-1)``, ``one_hot(391)``, ``transpose(1, 2)``, ``reshape(B, 391,
  28, 28)`` (tokens in raster order);
* ``main.py`` (``--tokenadapt-path``): the file is ``torch.load``-ed and
  loaded with ``strict=False`` into the classifier, so its keys are the
  classifier's ``conversion_function.*`` / ``reverse_transform.*``.

naver-ai/seit at commit 39b7a4a, which ships the file
(``weights/tokenadapt.ckpt``), defines the same two attributes and methods
in ``models_mtm.py`` and loads the file the same way
(``main_mtm_pretrain.py``, ``main_mtm_finetune.py``); its ``layers.py``
equals tokenadapt's up to formatting.

``layers.py`` of that commit is enhancing-transformers'
``enhancing/modules/stage1/layers.py`` (commit e1c185d) line for line except
``get_1d_sincos_pos_embed_from_grid``, whose ``omega`` is ``np.float32``
there (``np.float``, i.e. float64, in enhancing-transformers). So the ViT
classes are imported from ``tests/reference/vitvqgan_official.py`` (written
from that file) and their position tables are replaced by
:func:`sincos_2d_float32`, the float32 computation: ``arange(D/4)`` /
``(D/4)``, ``1 / 10000**ω``, outer product with the float32 positions,
``[sin | cos]``, column index first (``meshgrid(w, h)``).

Module names are the official ones, so ``RefTokenAdapt(...).state_dict()``
is an official-layout ``tokenadapt.ckpt``. Plain torch + numpy: no vistok
import. The sizes are arguments (defaults: the release) so tests can use a
tiny instance of the same layout.
"""
from typing import Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from reference.vitvqgan_official import ViTDecoder, ViTEncoder


def sincos_1d_float32(dim: int, positions: np.ndarray) -> np.ndarray:
    omega = np.arange(dim // 2, dtype=np.float32)
    omega /= dim / 2.0
    omega = 1.0 / 10000**omega
    angles = np.einsum('m,d->md', positions.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d_float32(dim: int, grid: Tuple[int, int]) -> np.ndarray:
    cols, rows = np.meshgrid(np.arange(grid[1], dtype=np.float32),
                             np.arange(grid[0], dtype=np.float32))
    return np.concatenate([
        sincos_1d_float32(dim // 2, cols),
        sincos_1d_float32(dim // 2, rows)
    ], axis=1)


def _set_table(parameter: nn.Parameter, dim: int, grid: int) -> None:
    table = torch.from_numpy(sincos_2d_float32(dim, (grid, grid)))
    with torch.no_grad():
        parameter.copy_(table.float().unsqueeze(0))


class RefTokenAdapt(nn.Module):
    """The TokenAdapt attributes of ``TokenVisionTransformer``.

    Args:
        code_dim: D (32). num_codes: K (391).
        dim, depth, heads, mlp_dim, dim_head: the ViTs (384, 1, 6, 1536,
            64).
        f_image_size: f's output side (64); g_image_size: g's input side
            (56); patch_size: 2.
    """

    def __init__(self, code_dim=32, num_codes=391, dim=384, depth=1, heads=6,
                 mlp_dim=1536, dim_head=64, f_image_size=64,
                 g_image_size=56, patch_size=2):
        super().__init__()
        vit = dict(patch_size=patch_size, dim=dim, depth=depth, heads=heads,
                   mlp_dim=mlp_dim, channels=code_dim, dim_head=dim_head)
        self.num_codes = num_codes
        self.out_grid = g_image_size // patch_size
        self.conversion_function = nn.Sequential(
            nn.Linear(code_dim, dim), ViTDecoder(f_image_size, **vit))
        self.reverse_transform = nn.Sequential(
            ViTEncoder(g_image_size, **vit), nn.Linear(dim, num_codes))
        _set_table(self.conversion_function[1].de_pos_embedding, dim,
                   f_image_size // patch_size)
        _set_table(self.reverse_transform[0].en_pos_embedding, dim,
                   self.out_grid)

    def forward_conversion(self, x):
        """``(B, D, h, w)`` embedding map -> ``(B, D, s·h, s·w)``."""
        return self.conversion_function(x.flatten(2).transpose(1, 2))

    def inversion_logits(self, x):
        """``(B, D, H, W)`` -> the ``(B, N, K)`` logits
        ``forward_inversion`` arg-maxes."""
        return self.reverse_transform(x)

    def forward_inversion(self, x):
        """The official one-hot ``(B, K, h', w')`` of the arg-max codes."""
        codes = self.inversion_logits(x).argmax(dim=-1)
        one_hot = F.one_hot(codes, self.num_codes).float().transpose(1, 2)
        return one_hot.reshape(x.shape[0], self.num_codes, self.out_grid,
                               self.out_grid)
