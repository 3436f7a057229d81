"""Procedural shapes: an embedded image dataset for demos and tests.

No files are read. Sample ``i`` is rendered from
``numpy.random.default_rng([seed, i])``, so it is bit-identical whatever the
access order, process or worker. An image is a background (linear gradient,
smooth colour noise or stripes), up to ``max_distractors`` small shapes and
one large main shape on top; the label is the main shape's class,
``i % len(SHAPES)`` (balanced classes).

Shapes are drawn from signed distance functions with one pixel of
anti-aliasing, all vectorised numpy: a 64x64 image takes about 0.3 ms.
"""
import cv2
import numpy as np

from vistok.registry import DATASETS
from .base import BaseImageDataset

SHAPES = ('circle', 'square', 'triangle', 'ring', 'cross', 'striped_square')
BACKGROUNDS = ('gradient', 'noise', 'stripes')

# unit normals of the edges of an equilateral triangle pointing up
_TRIANGLE_NORMALS = np.array(
    [[np.cos(a), np.sin(a)] for a in np.deg2rad([90, 210, 330])],
    dtype=np.float32)


def shape_sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance to a unit-radius ``shape`` centred at the origin
    (negative inside), in units of the radius; ``u`` right, ``v`` down."""
    if shape == 'circle':
        return np.hypot(u, v) - 1
    if shape == 'square':
        return np.maximum(np.abs(u), np.abs(v)) - 0.8
    if shape == 'triangle':  # vertices on the unit circle, apex up
        dist = [-(u * nx + v * ny) for nx, ny in _TRIANGLE_NORMALS]
        return np.maximum.reduce(dist) - 0.5
    if shape == 'ring':
        return np.abs(np.hypot(u, v) - 0.75) - 0.25
    if shape == 'cross':
        bar_h = np.maximum(np.abs(u) - 1, np.abs(v) - 0.3)
        bar_v = np.maximum(np.abs(u) - 0.3, np.abs(v) - 1)
        return np.minimum(bar_h, bar_v)
    if shape == 'striped_square':  # four vertical bars filling a square
        freq = 2.5
        phase = u * freq - np.floor(u * freq)
        stripes = (np.abs(phase - 0.5) - 0.25) / freq
        return np.maximum(shape_sdf('square', u, v), stripes)
    raise ValueError(f'unknown shape {shape!r}; choose from {SHAPES}')


@DATASETS.register_module()
class ProceduralShapesDataset(BaseImageDataset):
    """Deterministic procedural RGB images of coloured shapes.

    Each item (before the pipeline) is a dict with ``img`` (``(H, W, 3)``
    ``uint8`` RGB, ``H = W = image_size``), ``img_shape`` and ``ori_shape``
    (``(H, W)``), ``gt_label`` (index into ``SHAPES``), ``sample_idx`` and
    ``procedural_idx`` (the ``i`` the image is rendered from; equals
    ``sample_idx`` unless ``indices`` selected a subset).

    Args:
        num_samples: number of distinct images.
        image_size: side of the square images.
        seed: dataset seed; another seed gives another dataset.
        max_distractors: each image gets 0..max_distractors small shapes
            behind the main one.
        pipeline, test_mode, lazy_init, indices: as in
            ``mmengine.dataset.BaseDataset``.
        serialize_data: off by default: the list holds two ints per sample
            and mmengine's serialisation runs a ``gc.collect()`` (~0.2 s);
            turn it on for millions of samples and many workers.
    """
    METAINFO = dict(classes=SHAPES)

    def __init__(self,
                 num_samples: int = 1024,
                 image_size: int = 64,
                 seed: int = 0,
                 max_distractors: int = 2,
                 pipeline=(),
                 test_mode: bool = False,
                 lazy_init: bool = False,
                 indices=None,
                 serialize_data: bool = False):
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed
        self.max_distractors = max_distractors
        # pixel-centre coordinates, broadcast to (H, W) in the renderer
        coords = np.arange(image_size, dtype=np.float32) + 0.5
        self._x, self._y = coords[None, :], coords[:, None]
        super().__init__(
            pipeline=pipeline,
            test_mode=test_mode,
            lazy_init=lazy_init,
            indices=indices,
            serialize_data=serialize_data)

    def load_data_list(self):
        return [dict(procedural_idx=i, gt_label=i % len(SHAPES))
                for i in range(self.num_samples)]

    def get_data_info(self, idx: int) -> dict:
        info = super().get_data_info(idx)
        info['img'] = self.render(info['procedural_idx'])
        info['img_shape'] = info['ori_shape'] = info['img'].shape[:2]
        return info

    def render(self, i: int) -> np.ndarray:
        """The ``i``-th image, ``(H, W, 3)`` ``uint8`` RGB."""
        rng = np.random.default_rng([self.seed, i])
        size = self.image_size
        img = self._background(rng)
        for _ in range(rng.integers(0, self.max_distractors + 1)):
            shape = SHAPES[rng.integers(len(SHAPES))]
            radius = rng.uniform(0.06, 0.14) * size
            center = rng.uniform(0, size, 2)
            self._draw(img, rng, shape, center, radius, rng.uniform(0, 255, 3))
        # the main shape: large, inside the frame, contrasting colour
        radius = rng.uniform(0.2, 0.35) * size
        center = rng.uniform(radius, size - radius, 2)
        color = rng.uniform(0, 255, 3)
        if np.abs(color - img.mean((0, 1))).max() < 64:
            color = 255 - color
        self._draw(img, rng, SHAPES[i % len(SHAPES)], center, radius, color)
        return np.rint(img).astype(np.uint8)

    def _background(self, rng) -> np.ndarray:
        size = self.image_size
        kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
        c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        if kind == 'noise':  # bicubic upsampling of a few random colours
            cells = int(rng.integers(2, 6))
            low = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
            img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
            return np.clip(img, 0, 255)
        angle = rng.uniform(0, 2 * np.pi)
        proj = (self._x * np.cos(angle) + self._y * np.sin(angle)) / size
        if kind == 'gradient':
            t = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
        else:  # stripes
            cycles = rng.uniform(2, 8)
            t = 0.5 + 0.5 * np.sin(2 * np.pi * cycles * proj
                                   + rng.uniform(0, 2 * np.pi))
        return c0 + (c1 - c0) * t[..., None]

    def _draw(self, img, rng, shape, center, radius, color) -> None:
        """Alpha-blend ``shape`` into ``img`` (float ``(H, W, 3)``) in place,
        inside the window that can hold it (1.2 radii around the centre)."""
        angle = rng.uniform(0, 2 * np.pi)
        cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        reach = 1.2 * radius + 1
        x0, y0 = np.clip(np.floor(center - reach), 0, None).astype(int)
        x1, y1 = np.ceil(center + reach).astype(int)
        dx = self._x[:, x0:x1] - np.float32(center[0])
        dy = self._y[y0:y1] - np.float32(center[1])
        radius = np.float32(radius)
        u = (dx * cos + dy * sin) / radius
        v = (dy * cos - dx * sin) / radius
        # signed distance in pixels -> coverage with a one-pixel ramp
        alpha = np.clip(0.5 - shape_sdf(shape, u, v) * radius, 0, 1)
        window = img[y0:y1, x0:x1]
        window += alpha[..., None] * (color.astype(np.float32) - window)
