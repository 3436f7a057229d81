"""Reconstruct image files with a tokenizer ("try it on my images").

    model = load_tokenizer(config, checkpoint)
    size = input_size(Config.fromfile(config))
    files = find_images(['my_photos/', 'cat.jpg'])
    rows, skipped = reconstruct_files(model, files, 'out/', size)

Every image is read with PIL (EXIF orientation applied; grayscale, palette,
16-bit and CMYK images become RGB; an alpha channel is composited onto
white), **resized so its short side is the tokenizer's input size and
centre-cropped to a square of that size** (:func:`fit_square`, PIL's
``ImageOps.fit``, bicubic), so an image of any size — a 1×1 pixel too —
is tokenized as the model was trained. Per image it writes
``<name>.recon.png`` (input as the model saw it | reconstruction) and
``<name>.tokens.png`` (its token grid, :func:`draw_token_grid`), and
returns one metrics row: PSNR and SSIM on the uint8 [0, 255] images of
that side-by-side PNG, with vistok's own :func:`~vistok.evaluation.
metrics.psnr.psnr` (capped at 100 dB for identical images) and
:func:`~vistok.evaluation.metrics.ssim` (Gaussian σ = 1.5, averaged over
the RGB channels) — the definitions of the ``PSNR`` / ``SSIM`` metrics of
``tools/test.py``, so the numbers compare with a test run's (which averages
them over unrounded reconstructions). Files that are not readable images
(text, empty, truncated, missing) are returned as skipped with the reason,
in input order.
"""
import math
import os
import os.path as osp
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config
from PIL import Image, ImageOps

from vistok.evaluation.metrics.psnr import psnr
from vistok.evaluation.metrics.ssim import gaussian_window, ssim
from .tokenize import Indices, detokenize, tokenize

#: the pixel range the metrics are computed on (uint8 images)
PIXEL_MAX = 255.0
#: white: the background of composited alpha, gaps and panel padding
BACKGROUND = (255, 255, 255)
#: resampling filter of :func:`fit_square`
RESAMPLE = Image.Resampling.BICUBIC
#: white columns between input and reconstruction in ``<name>.recon.png``
SIDE_BY_SIDE_GAP_PX = 4
#: a token grid panel is drawn this many pixels along its longest side (or
#: the input size, if larger), with whole pixels per token cell
TOKEN_GRID_MIN_PX = 256
#: white columns between the panels of a multi-level token grid
PANEL_GAP_PX = 8
#: successive code ids step the hue by the golden ratio (a low-discrepancy
#: sequence), so neighbouring ids get far-apart colours
HUE_STEP = (math.sqrt(5.0) - 1.0) / 2.0
#: a second irrational step varies the brightness in [1 - range, 1]
VALUE_STEP, VALUE_RANGE = math.sqrt(2.0) - 1.0, 0.4
#: separates the folders of a relative path in output names
NAME_SEPARATOR = '__'
RECON_SUFFIX = '.recon.png'
TOKENS_SUFFIX = '.tokens.png'
#: columns of the metrics CSV (``tokens_shape`` as :func:`tokens_shape`)
METRICS_FIELDS = ('file', 'width', 'height', 'tokens_shape', 'psnr', 'ssim',
                  'side_by_side', 'token_grid')
SKIPPED_FIELDS = ('file', 'reason')


class UnreadableImageError(ValueError):
    """A file that is not a readable image; the message is the reason."""


def input_size(cfg: Config, size: Optional[int] = None) -> int:
    """The square size images are fitted to: ``size`` when given, else the
    config's top-level ``image_size`` (every tokenizer config of vistok
    sets it: the size its datasets and test pipeline produce)."""
    value = cfg.get('image_size') if size is None else size
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        source = 'size' if size is not None else (
            f'{cfg.filename or "the config"}: image_size')
        raise ValueError(f'{source} must be a positive int (the '
                         f"tokenizer's input size), got {value!r}; pass "
                         f'--size N')
    return value


def find_images(paths: Iterable[str]) -> List[Tuple[str, str]]:
    """The files of ``paths`` (files or folders, in order) as ``(path,
    name)``.

    Folders are walked recursively, every file in sorted path order (no
    filter on the extension: a file that is not an image is skipped later,
    with its reason, as is a path that does not exist). ``name`` is
    unique: the file's name for a file argument, ``<folder>__<sub>__<file>``
    for a file found in a folder (a repeated name gets ``-2``, ``-3``,
    ...).
    """
    files, taken = [], set()

    def add(path, name):
        unique, copy = name, 1
        while unique in taken:
            copy += 1
            unique = f'{name}-{copy}'
        taken.add(unique)
        files.append((path, unique))

    for path in paths:
        if osp.isdir(path):
            root = osp.normpath(path)
            found = [
                osp.join(folder, file)
                for folder, _, names in os.walk(root) for file in names]
            prefix = osp.basename(osp.abspath(root))
            for file in sorted(found):
                rel = osp.relpath(file, root).split(os.sep)
                add(file, NAME_SEPARATOR.join([prefix, *rel]))
        else:
            add(path, osp.basename(path))
    return files


def read_rgb(path: str) -> Image.Image:
    """The RGB image of ``path``, fully decoded.

    Raises:
        UnreadableImageError: the reason ``path`` is not a readable image
            (no such file, empty file, not an image format PIL knows,
            truncated, ...).
    """
    if not osp.isfile(path):
        raise UnreadableImageError('no such file or folder')
    if osp.getsize(path) == 0:
        raise UnreadableImageError('empty file')
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
    # PIL raises many types on broken files (OSError, SyntaxError,
    # struct.error, DecompressionBombError, ...): each one is a reason
    except Exception as err:
        raise UnreadableImageError(
            f'not a readable image ({type(err).__name__}: {err})') from err
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as RGB: 16-bit grayscale scaled to 8 bits, transparency
    composited onto white, any other mode converted by PIL."""
    if image.mode.startswith('I;16'):
        scaled = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(scaled.round().astype(np.uint8))
    if 'A' in image.getbands() or 'transparency' in image.info:
        rgba = image.convert('RGBA')
        background = Image.new('RGBA', rgba.size, BACKGROUND + (255, ))
        image = Image.alpha_composite(background, rgba)
    return image.convert('RGB')


def fit_square(image: Image.Image, size: int) -> np.ndarray:
    """``(size, size, 3)`` uint8: ``image`` resized (bicubic) so its short
    side is ``size``, then centre-cropped (any size, 1×1 too)."""
    fitted = ImageOps.fit(image, (size, size), method=RESAMPLE,
                          centering=(0.5, 0.5))
    return np.array(fitted.convert('RGB'), dtype=np.uint8)


def sample_levels(indices: Indices, i: int) -> List[np.ndarray]:
    """Image ``i``'s index arrays, one per level (a tensor: one level; a
    list / tuple of tensors: each)."""
    levels = [indices] if torch.is_tensor(indices) else list(indices)
    return [level[i].cpu().numpy() for level in levels]


def tokens_shape(levels: Sequence[np.ndarray]) -> str:
    """The per-image index shapes, levels joined by ``+``: ``16x16`` (a
    grid), ``16x16x2`` (a trailing depth / branch axis), ``32`` (a 1-D
    sequence), ``1x1+2x2+4x4`` (multi-scale), ``8x8+16x16`` (top, bottom)."""
    return '+'.join('x'.join(str(n) for n in level.shape) or '1'
                    for level in levels)


def token_panels(levels: Sequence[np.ndarray]) -> List[np.ndarray]:
    """2-D code-id panels of one image's levels, left to right: a 1-axis
    level (a 1-D tokenizer's sequence) is one row; a 2-axis level is one
    grid (rows × columns: a ``(h, w)`` map, or a 1-D tokenizer's ``(K,
    D)`` with K rows of D depth ids); a 3-axis level ``(h, w, D)`` is D
    grids, one per depth / branch."""
    panels = []
    for level in levels:
        if level.ndim == 1:
            panels.append(level[None])
        elif level.ndim == 2:
            panels.append(level)
        elif level.ndim == 3:
            panels.extend(level[..., d] for d in range(level.shape[-1]))
        else:
            raise ValueError(f'token grid: cannot draw an index level of '
                             f'per-image shape {level.shape} (1 to 3 axes)')
    return panels


def code_colours(codes: np.ndarray) -> np.ndarray:
    """A fixed colour per code id: ``codes.shape + (3,)`` uint8 RGB (hue
    steps by the golden ratio per id, brightness by √2 - 1; full
    saturation). The same id has the same colour in every image and
    level."""
    codes = np.asarray(codes, dtype=np.float64)
    hsv = np.stack([
        np.mod(codes * HUE_STEP, 1.0),
        np.ones_like(codes),
        1.0 - VALUE_RANGE * np.mod(codes * VALUE_STEP, 1.0)], axis=-1)
    hsv8 = np.round(hsv * 255.0).astype(np.uint8)
    flat = hsv8.reshape(1, -1, 3)
    rgb = np.asarray(Image.fromarray(flat, 'HSV').convert('RGB'))
    return rgb.reshape(hsv8.shape)


def draw_token_grid(levels: Sequence[np.ndarray],
                    min_px: int = TOKEN_GRID_MIN_PX) -> np.ndarray:
    """``(H, W, 3)`` uint8 picture of one image's codes: each panel of
    :func:`token_panels` with one square cell of :func:`code_colours` per
    token, ``min_px // longest side`` pixels wide (at least 1), panels
    top-aligned left to right, :data:`PANEL_GAP_PX` apart, on white."""
    pictures = []
    for panel in token_panels(levels):
        cell = max(1, min_px // max(panel.shape))
        colours = code_colours(panel)
        pictures.append(colours.repeat(cell, axis=0).repeat(cell, axis=1))
    height = max(p.shape[0] for p in pictures)
    width = sum(p.shape[1] for p in pictures) + PANEL_GAP_PX * (
        len(pictures) - 1)
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[...] = BACKGROUND
    x = 0
    for picture in pictures:
        canvas[:picture.shape[0], x:x + picture.shape[1]] = picture
        x += picture.shape[1] + PANEL_GAP_PX
    return canvas


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``left | right`` (equal-height ``(H, W, 3)`` uint8) with
    :data:`SIDE_BY_SIDE_GAP_PX` white columns between them."""
    gap = np.empty((left.shape[0], SIDE_BY_SIDE_GAP_PX, 3), dtype=np.uint8)
    gap[...] = BACKGROUND
    return np.concatenate([left, gap, right], axis=1)


def image_metrics(pred: np.ndarray, target: np.ndarray) -> Tuple[float,
                                                                  float]:
    """``(psnr, ssim)`` of two ``(H, W, 3)`` uint8 images on [0, 255]
    (see the module docstring); SSIM is NaN for images smaller than its
    Gaussian window (11 pixels)."""
    pred_t = torch.from_numpy(pred).permute(2, 0, 1).double()
    target_t = torch.from_numpy(target).permute(2, 0, 1).double()
    value_ssim = float('nan')
    if min(pred.shape[:2]) >= gaussian_window().numel():
        value_ssim = ssim(pred_t[None], target_t[None], PIXEL_MAX).item()
    return psnr(pred_t, target_t, PIXEL_MAX), value_ssim


def reconstruct_files(model: nn.Module,
                      files: Sequence[Tuple[str, str]],
                      out_dir: str,
                      size: int,
                      use_ema: Optional[bool] = None,
                      wrap: Callable[[Iterable], Iterable] = iter
                      ) -> Tuple[List[dict], List[Tuple[str, str]]]:
    """Reconstruct ``files`` (``(path, name)`` of :func:`find_images`) one
    at a time with ``model`` (:func:`~.tokenize.tokenize` then
    :func:`~.tokenize.detokenize`; ``use_ema`` as there), writing
    ``out_dir/<name>.recon.png`` and ``out_dir/<name>.tokens.png``.

    Args:
        size: the square input size (:func:`input_size`).
        wrap: wraps the loop over ``files`` (e.g. a progress bar).

    Returns:
        ``(rows, skipped)``: one dict per reconstructed image with the
        keys of :data:`METRICS_FIELDS` (``width`` / ``height`` of the
        file's image, before fitting), and ``(path, reason)`` per file
        that is not a readable image (or does not exist).
    """
    os.makedirs(out_dir, exist_ok=True)
    rows, skipped = [], []
    for path, name in wrap(files):
        try:
            image = read_rgb(path)
        except UnreadableImageError as err:
            skipped.append((path, str(err)))
            continue
        fitted = fit_square(image, size)
        pixels = torch.from_numpy(fitted).permute(2, 0, 1)[None]
        indices = tokenize(model, pixels, use_ema=use_ema)
        recon = detokenize(model, indices, use_ema=use_ema)[0]
        recon = recon.permute(1, 2, 0).numpy()
        levels = sample_levels(indices, 0)
        recon_file, tokens_file = name + RECON_SUFFIX, name + TOKENS_SUFFIX
        Image.fromarray(side_by_side(fitted, recon)).save(
            osp.join(out_dir, recon_file))
        Image.fromarray(draw_token_grid(levels, max(size,
                                                    TOKEN_GRID_MIN_PX))).save(
            osp.join(out_dir, tokens_file))
        value_psnr, value_ssim = image_metrics(recon, fitted)
        rows.append(dict(file=path, width=image.width, height=image.height,
                         tokens_shape=tokens_shape(levels), psnr=value_psnr,
                         ssim=value_ssim, side_by_side=recon_file,
                         token_grid=tokens_file))
    return rows, skipped
