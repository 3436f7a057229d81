import numpy as np

from vistok.datasets import ProceduralShapesDataset
from vistok.datasets.procedural import SHAPES
from vistok.registry import DATASETS


def test_item_layout():
    ds = ProceduralShapesDataset(num_samples=16, image_size=48)
    item = ds[3]
    assert item['img'].shape == (48, 48, 3)
    assert item['img'].dtype == np.uint8
    assert item['img_shape'] == item['ori_shape'] == (48, 48)
    assert item['sample_idx'] == 3
    assert ds.metainfo['classes'] == SHAPES
    assert len(ds) == 16


def test_deterministic_across_instances_and_order():
    a = ProceduralShapesDataset(num_samples=32, seed=7)
    b = ProceduralShapesDataset(num_samples=32, seed=7)
    forward = [a[i]['img'] for i in range(32)]
    backward = [b[i]['img'] for i in reversed(range(32))][::-1]
    for x, y in zip(forward, backward):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a[5]['img'], a[5]['img'])
    other_seed = ProceduralShapesDataset(num_samples=32, seed=8)
    assert not np.array_equal(a[5]['img'], other_seed[5]['img'])


def test_indices_differ_and_labels():
    ds = ProceduralShapesDataset(num_samples=24)
    imgs = [ds[i]['img'] for i in range(24)]
    assert all(not np.array_equal(imgs[i], imgs[j])
               for i in range(24) for j in range(i + 1, 24))
    labels = [ds[i]['gt_label'] for i in range(24)]
    assert all(0 <= label < len(SHAPES) for label in labels)
    assert len(set(labels)) == len(SHAPES)


def test_subset_keeps_images():
    full = ProceduralShapesDataset(num_samples=10)
    subset = ProceduralShapesDataset(num_samples=10, indices=[4, 7])
    assert len(subset) == 2
    np.testing.assert_array_equal(subset[1]['img'], full[7]['img'])
    assert subset[1]['gt_label'] == full[7]['gt_label']


def test_buildable_from_registry():
    ds = DATASETS.build(dict(type='ProceduralShapesDataset', num_samples=200))
    assert len(ds) == 200 and ds.render(199).shape == (64, 64, 3)
