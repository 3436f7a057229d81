"""tools/reconstruct.py and vistok.apis.reconstruct: "try it on my images"
on a folder of mixed files, with a tiny tokenizer of random weights."""
import contextlib
import csv
import io
import os
import os.path as osp
import runpy

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from _helpers import REPO_ROOT
from vistok.apis.reconstruct import (
    PANEL_GAP_PX,
    SIDE_BY_SIDE_GAP_PX,
    code_colours,
    draw_token_grid,
    find_images,
)
from vistok.apis.tokenize import detokenize, load_tokenizer, tokenize
from vistok.registry import MODELS

TINY_CONFIG = osp.join(REPO_ROOT, 'tests/data/configs/tiny_vqvae.py')
TOOL = osp.join(REPO_ROOT, 'tools/reconstruct.py')
SIZE = 32  # tiny_vqvae's image_size; downsampling factor 2
GRID = SIZE // 2
CELL = 256 // GRID  # TOKEN_GRID_MIN_PX // tokens along the longest side
ONE_PIXEL = (200, 30, 90)
# (relative path, (width, height)) of the images, in the sorted order the
# tool reads them; the 1x1 image is resized, not skipped: 4 outputs
IMAGES = [('photo.jpg', (70, 50)), ('photo.png', (SIZE, 3 * SIZE)),
          ('sub/gray.png', (33, 45)), ('tiny.png', (1, 1))]
SKIPPED = {'empty.png': 'empty file',
           'notes.txt': 'not a readable image (UnidentifiedImageError'}


@pytest.fixture(scope='module')
def tool():
    return runpy.run_path(TOOL)


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
    """(config, checkpoint) of tiny_vqvae with its random initialisation."""
    root = tmp_path_factory.mktemp('tokenizer')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(TINY_CONFIG).model)
    checkpoint = root / 'iter_1.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict(iter=1)),
               checkpoint)
    return TINY_CONFIG, str(checkpoint)


def smooth_image(width, height, seed):
    """A smooth colour image (gradients), so the crop is easy to predict."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [np.sin(a * x + b * y + c) for a, b, c in
                rng.uniform(1, 6, size=(3, 3))]
    return (np.stack(channels, -1) * 127.5 + 127.5).astype(np.uint8)


def tall_image():
    """SIZE x 3 SIZE: a smooth middle square between solid bands, so the
    centre crop (at scale 1) is exactly the middle square."""
    pixels = np.zeros((3 * SIZE, SIZE, 3), dtype=np.uint8)
    pixels[:SIZE] = (255, 0, 0)
    pixels[SIZE:2 * SIZE] = smooth_image(SIZE, SIZE, seed=1)
    pixels[2 * SIZE:] = (0, 0, 255)
    return pixels


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('mine') / 'photos'
    (root / 'sub').mkdir(parents=True)
    Image.fromarray(smooth_image(*IMAGES[0][1], seed=0)).save(
        root / IMAGES[0][0])
    Image.fromarray(tall_image()).save(root / IMAGES[1][0])
    gray = smooth_image(*IMAGES[2][1], seed=2)[..., 0]
    Image.fromarray(gray, 'L').save(root / IMAGES[2][0])
    Image.new('RGB', (1, 1), ONE_PIXEL).save(root / 'tiny.png')
    (root / 'notes.txt').write_text('not an image\n')
    (root / 'empty.png').write_bytes(b'')
    return str(root)


@pytest.fixture(scope='module')
def run(tool, tokenizer, folder, tmp_path_factory):
    """(exit status, output folder, printed text) of the tool on
    ``folder``."""
    out = str(tmp_path_factory.mktemp('out') / 'recon')
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = tool['main']([*tokenizer, folder, '--out', out])
    return status, out, printed.getvalue()


def read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def halves(path):
    """(input, reconstruction) halves of a side-by-side PNG."""
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (SIZE, 2 * SIZE + SIDE_BY_SIDE_GAP_PX, 3)
    assert (pixels[:, SIZE:SIZE + SIDE_BY_SIDE_GAP_PX] == 255).all()
    return pixels[:, :SIZE], pixels[:, -SIZE:]


def test_mixed_folder_outputs_and_skips(run, folder):
    status, out, printed = run
    assert status == 0
    rows = read_csv(osp.join(out, 'metrics.csv'))
    assert [row['file'] for row in rows] == [
        osp.join(folder, name) for name, _ in IMAGES]
    assert [(int(r['width']), int(r['height'])) for r in rows] == [
        size for _, size in IMAGES]
    assert {row['tokens_shape'] for row in rows} == {f'{GRID}x{GRID}'}
    names = ['photos__' + name.replace('/', '__') for name, _ in IMAGES]
    assert sorted(os.listdir(out)) == sorted(
        ['metrics.csv', 'skipped.csv'] +
        [n + '.recon.png' for n in names] + [n + '.tokens.png' for n in names])
    skipped = read_csv(osp.join(out, 'skipped.csv'))
    assert [row['file'] for row in skipped] == [
        osp.join(folder, name) for name in sorted(SKIPPED)]
    for row in skipped:
        assert row['reason'].startswith(SKIPPED[osp.basename(row['file'])])
        assert f"  {row['file']}: {row['reason']}" in printed.splitlines()
    assert 'reconstructed 4 image(s)' in printed


def test_metrics_match_skimage_on_the_written_halves(run):
    _, out, _ = run
    for row in read_csv(osp.join(out, 'metrics.csv')):
        image, recon = halves(osp.join(out, row['side_by_side']))
        expected = peak_signal_noise_ratio(image, recon, data_range=255)
        assert float(row['psnr']) == pytest.approx(expected, abs=1e-5)
        expected = structural_similarity(
            image, recon, data_range=255, channel_axis=2,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert float(row['ssim']) == pytest.approx(expected, abs=1e-5)


def test_pictures_are_the_models_reconstruction_and_codes(run, tokenizer):
    _, out, _ = run
    model = load_tokenizer(*tokenizer)
    rows = read_csv(osp.join(out, 'metrics.csv'))
    for row in rows:
        image, recon = halves(osp.join(out, row['side_by_side']))
        pixels = torch.from_numpy(image.copy()).permute(2, 0, 1)[None]
        indices = tokenize(model, pixels)
        expected = detokenize(model, indices)[0].permute(1, 2, 0).numpy()
        assert np.array_equal(recon, expected)
        grid = np.asarray(Image.open(osp.join(out, row['token_grid'])))
        assert grid.shape == (GRID * CELL, GRID * CELL, 3)
        assert np.array_equal(grid[::CELL, ::CELL],
                              code_colours(indices[0].numpy()))
    # short side to SIZE, then the centre square
    tall, _ = halves(osp.join(out, rows[1]['side_by_side']))
    assert np.array_equal(tall, tall_image()[SIZE:2 * SIZE])
    # grayscale -> RGB with equal channels; the 1x1 image -> its colour
    gray, _ = halves(osp.join(out, rows[2]['side_by_side']))
    assert (gray == gray[..., :1]).all() and gray.std() > 0
    tiny, _ = halves(osp.join(out, rows[3]['side_by_side']))
    assert (tiny == np.array(ONE_PIXEL, dtype=np.uint8)).all()


def test_help_states_resize_and_one_pixel_policy(tool):
    text = ' '.join(tool['build_parser']().format_help().split())
    assert 'short side is the tokenizer\'s input size, then centre-cropped' \
        in text
    assert '1x1 image is resized too' in text


def test_missing_checkpoint_is_a_clear_error(tool, tokenizer, folder,
                                             tmp_path, capsys):
    missing = str(tmp_path / 'no_such.pth')
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as exit_info:
        tool['main']([tokenizer[0], missing, folder, '--out', str(out)])
    assert exit_info.value.code == 2
    assert f'checkpoint {missing} does not exist' in capsys.readouterr().err
    assert not out.exists()


def test_nothing_readable_exits_1(tool, tokenizer, folder, tmp_path):
    status = tool['main']([*tokenizer, osp.join(folder, 'notes.txt'),
                           str(tmp_path / 'missing.png'), '--out',
                           str(tmp_path / 'out')])
    assert status == 1
    skipped = read_csv(str(tmp_path / 'out' / 'skipped.csv'))
    assert skipped[0]['reason'].startswith(SKIPPED['notes.txt'])
    assert skipped[1]['reason'] == 'no such file or folder'


def test_find_images_names_are_unique(tmp_path):
    for folder in ('a', 'b'):
        (tmp_path / folder / 'x').mkdir(parents=True)
        (tmp_path / folder / 'x' / 'img.png').write_bytes(b'')
    a, b = str(tmp_path / 'a'), str(tmp_path / 'a' / 'x' / 'img.png')
    files = find_images([a, b, b])
    assert [name for _, name in files] == ['a__x__img.png', 'img.png',
                                           'img.png-2']
    assert [path for path, _ in files] == [b, b, b]


def test_multi_level_token_grid_panels():
    """Multi-scale levels (1x1, 2x2) and a trailing depth axis (2x2x2) are
    panels left to right, one cell colour per code, each panel scaled to
    the same side."""
    levels = [np.array([[5]]), np.arange(4).reshape(2, 2),
              np.arange(8).reshape(2, 2, 2)]
    side = 64
    picture = draw_token_grid(levels, side)
    assert picture.shape == (side, 4 * side + 3 * PANEL_GAP_PX, 3)
    starts = [k * (side + PANEL_GAP_PX) for k in range(4)]
    assert (picture[:, starts[0]:side] == code_colours(5)).all()
    half = side // 2
    expected = [levels[1], levels[2][..., 0], levels[2][..., 1]]
    for start, codes in zip(starts[1:], expected):
        assert np.array_equal(picture[::half, start:start + side:half],
                              code_colours(codes))
    assert (picture[:, side:starts[1]] == 255).all()
    # one colour per code id: the 9 ids used here are all distinct colours
    colours = code_colours(np.arange(9)).reshape(-1, 3)
    assert len({tuple(c) for c in colours}) == 9
