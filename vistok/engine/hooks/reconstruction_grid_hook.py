"""Grids of a fixed set of validation images over their reconstructions,
written during training."""
import os
import os.path as osp
from typing import Optional, Sequence

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from PIL import Image

from vistok.registry import HOOKS
from vistok.utils.rng import get_rng_state, set_rng_state
from .save_reconstructions_hook import to_uint8_hwc


def _rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` uint8 -> ``(H, W, 3)`` (grey repeated)."""
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def reconstruction_grid(inputs: Sequence[np.ndarray],
                        reconstructions: Sequence[np.ndarray],
                        nrow: int = 8,
                        padding: int = 2,
                        pad_value: int = 255) -> np.ndarray:
    """Inputs over their reconstructions, ``nrow`` images per row.

    The images are cut into chunks of ``nrow``; each chunk gives a row of
    inputs with the row of their reconstructions right below it. Tiles are
    separated by (and the grid framed with) ``padding`` pixels of
    ``pad_value``, as ``torchvision.utils.make_grid`` does.

    Args:
        inputs, reconstructions: equally many uint8 images ``(H, W)`` or
            ``(H, W, C)`` (as from :func:`to_uint8_hwc`), all of one size.
        nrow: images per row.
        padding: pixels between tiles and around the grid.
        pad_value: value of the padding pixels.

    Returns:
        The grid, uint8 ``(rows·(H + p) + p, nrow'·(W + p) + p, 3)`` with
        ``rows = 2·ceil(N / nrow)``, ``nrow' = min(nrow, N)``.
    """
    if len(inputs) != len(reconstructions) or not inputs:
        raise ValueError(f'need as many reconstructions as inputs (at least '
                         f'one), got {len(inputs)} and {len(reconstructions)}')
    tiles = [_rgb(image) for image in (*inputs, *reconstructions)]
    shapes = {tile.shape for tile in tiles}
    if len(shapes) != 1:
        raise ValueError(f'all images must have one size, got {shapes}')
    height, width, channels = shapes.pop()
    num, cols = len(inputs), min(nrow, len(inputs))
    rows = 2 * -(-num // nrow)
    grid = np.full((rows * (height + padding) + padding,
                    cols * (width + padding) + padding, channels),
                   pad_value, dtype=np.uint8)
    for i in range(num):
        for level, tile in enumerate((tiles[i], tiles[num + i])):
            top = (2 * (i // nrow) + level) * (height + padding) + padding
            left = (i % nrow) * (width + padding) + padding
            grid[top:top + height, left:left + width] = tile
    return grid


@HOOKS.register_module()
class ReconstructionGridHook(Hook):
    """Every ``interval`` training iterations and after training, write a
    grid of the first ``num_images`` validation images over their
    reconstructions.

    On rank 0 only, the images ``0 .. num_images - 1`` of the validation
    dataloader's dataset (loaded once, collated with its ``collate_fn``) go
    through ``model.val_step`` in eval mode under ``torch.no_grad()``, so
    the model's own validation path is used (its EMA copy when it is
    configured to validate with it). The ``gt_img`` / ``pred_img`` of the
    predicted samples (``(C, H, W)`` in [0, 255]) form a
    :func:`reconstruction_grid`, written as
    ``{out_dir}/iter_{N:07d}.png`` (``N`` = completed iterations) and passed
    to ``runner.visualizer.add_image(image_name, grid, step=N)`` so every
    configured vis backend (e.g. ``TensorboardVisBackend``) gets it.

    Training is unaffected: each module's train / eval flag and the python,
    numpy and torch RNG states are restored afterwards, so a run with the
    hook is bit-identical to one without.

    Args:
        interval: period in training iterations.
        num_images: number of validation images shown.
        nrow: images per row of the grid.
        padding: pixels between the tiles.
        pad_value: grey value of the padding.
        out_dir: directory of the PNGs; a relative path is taken inside the
            work dir.
        image_name: name of the image for the visualizer.
    """

    priority = 'LOW'

    def __init__(self,
                 interval: int = 1000,
                 num_images: int = 8,
                 nrow: int = 8,
                 padding: int = 2,
                 pad_value: int = 255,
                 out_dir: str = 'reconstructions',
                 image_name: str = 'reconstructions'):
        for name, value in (('interval', interval), ('num_images', num_images),
                            ('nrow', nrow)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f'{name} must be a positive int, got {value!r}')
        self.interval = interval
        self.num_images = num_images
        self.nrow = nrow
        self.padding = padding
        self.pad_value = pad_value
        self.out_dir = out_dir
        self.image_name = image_name
        self._batch = None
        self._last_step: Optional[int] = None

    def before_train(self, runner) -> None:
        if runner.val_loop is None:
            raise ValueError('ReconstructionGridHook takes its images from '
                             'the validation set: configure val_dataloader, '
                             'val_cfg and val_evaluator')
        if not osp.isabs(self.out_dir):
            self.out_dir = osp.join(runner.work_dir, self.out_dir)
        if is_main_process():
            os.makedirs(self.out_dir, exist_ok=True)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if self.every_n_train_iters(runner, self.interval):
            self.write_grid(runner, runner.iter + 1)

    def after_train(self, runner) -> None:
        if self._last_step != runner.iter:
            self.write_grid(runner, runner.iter)

    def _fixed_batch(self, runner):
        """The first ``num_images`` validation samples, collated (cached)."""
        if self._batch is None:
            loader = runner.val_dataloader
            if len(loader.dataset) < self.num_images:
                raise ValueError(
                    f'num_images={self.num_images} exceeds the '
                    f'{len(loader.dataset)} images of the validation set')
            self._batch = loader.collate_fn(
                [loader.dataset[i] for i in range(self.num_images)])
        return self._batch

    def write_grid(self, runner, step: int) -> Optional[np.ndarray]:
        """Predict the fixed images, write and log their grid at ``step``;
        returns the grid on rank 0, ``None`` elsewhere."""
        self._last_step = step
        if not is_main_process():
            return None
        model = runner.model
        modes = [(module, module.training) for module in model.modules()]
        rng_state = get_rng_state()
        try:
            model.eval()
            with torch.no_grad():
                samples = model.val_step(self._fixed_batch(runner))
        finally:
            for module, training in modes:
                module.training = training
            set_rng_state(rng_state)
        missing = [
            key for key in ('gt_img', 'pred_img') if key not in samples[0]
        ]
        if missing:
            raise KeyError(f'val_step of {type(model).__name__} returned '
                           f'samples without {missing}')
        grid = reconstruction_grid(
            [to_uint8_hwc(sample.gt_img) for sample in samples],
            [to_uint8_hwc(sample.pred_img) for sample in samples],
            nrow=self.nrow, padding=self.padding, pad_value=self.pad_value)
        Image.fromarray(grid).save(
            osp.join(self.out_dir, f'iter_{step:07d}.png'))
        runner.visualizer.add_image(self.image_name, grid, step=step)
        return grid
