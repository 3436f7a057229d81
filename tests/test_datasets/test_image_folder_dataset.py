import numpy as np
import pytest
from PIL import Image

from vistok.datasets import ImageFolderDataset

COLORS = {'cat': (255, 0, 0), 'dog': (0, 0, 255)}


def _write(path, color, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', size, color).save(path)


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / 'train'
    for name, color in COLORS.items():
        for i in range(3):
            _write(root / name / f'{i}.png', color)
    _write(root / 'dog' / 'nested' / 'x.PNG', COLORS['dog'])
    (root / 'dog' / 'notes.txt').write_text('not an image')
    return root


def test_class_subfolders(class_folder):
    ds = ImageFolderDataset(data_root=str(class_folder),
                            pipeline=[dict(type='LoadImageRGB')])
    assert ds.metainfo['classes'] == ('cat', 'dog')
    assert len(ds) == 7
    labels = [ds.get_data_info(i)['gt_label'] for i in range(7)]
    assert labels == [0, 0, 0, 1, 1, 1, 1]
    item = ds[0]
    assert item['img'].shape == (10, 12, 3) and item['img'].dtype == np.uint8
    assert tuple(item['img'][0, 0]) == COLORS['cat']  # RGB order
    assert item['img_path'].endswith('cat/0.png')


def test_classes_argument_orders_labels(class_folder):
    ds = ImageFolderDataset(data_root=str(class_folder), classes=['dog'])
    assert len(ds) == 4
    assert {ds.get_data_info(i)['gt_label'] for i in range(4)} == {0}


def test_flat_folder_and_ann_file(tmp_path):
    for i in range(3):
        _write(tmp_path / 'imgs' / f'{i}.jpg', (0, 255, 0))
    flat = ImageFolderDataset(data_root=str(tmp_path / 'imgs'))
    assert len(flat) == 3 and 'gt_label' not in flat.get_data_info(0)
    (tmp_path / 'list.txt').write_text('imgs/2.jpg 5\nimgs/0.jpg\n\n')
    listed = ImageFolderDataset(data_root=str(tmp_path), ann_file='list.txt')
    assert len(listed) == 2
    assert listed.get_data_info(0)['gt_label'] == 5
    assert listed.get_data_info(0)['img_path'].endswith('imgs/2.jpg')
    assert 'gt_label' not in listed.get_data_info(1)


def test_missing_or_empty_folder(tmp_path):
    missing = tmp_path / 'nope'
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ImageFolderDataset(data_root=str(missing))
    empty = tmp_path / 'empty'
    (empty / 'cls').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match='no images'):
        ImageFolderDataset(data_root=str(empty))


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / 'imgs' / 'broken.png'
    bad.parent.mkdir()
    bad.write_bytes(b'not a png')
    ds = ImageFolderDataset(data_root=str(tmp_path / 'imgs'),
                            pipeline=[dict(type='LoadImageRGB')],
                            test_mode=True)
    with pytest.raises(OSError, match='broken.png'):
        ds[0]
