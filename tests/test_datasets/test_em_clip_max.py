"""``EMVolumeDataset(clip_max=...)`` and TokenUnify's MEC test set-up.

The official reader of the MEC test volume wafer 4 (``Provider_valid`` in
``src/provider_valid.py``, branch ``'wafer'``, ydchen0806/TokenUnify@
221674f4c9b87efc730370dcf0443cf0f334c928) computes
``np.where(data > 255, 255, data.astype('uint8'))`` and divides by 255.
"""
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.evaluator import Evaluator
from skimage.metrics import variation_of_information as skimage_voi

from vistok.datasets.em import EMVolumeDataset
from vistok.registry import DATASETS, METRICS

MEC_BASE = (Path(__file__).parents[2] / 'projects' / 'TokenUnify' /
            'configs' / '_base_' / 'mec.py')
SHAPE = (4, 12, 10)


def official_wafer4(data):
    """The official intensities of wafer 4, in float64."""
    return np.where(data > 255, 255, data.astype('uint8')) / 255.0


def _write(path, raw, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(str(path).replace('@', 'inputs'), 'w') as f:
        f.create_dataset('main', data=raw)
    with h5py.File(str(path).replace('@', 'labels'), 'w') as f:
        f.create_dataset('main', data=labels)


def _wide_raw(seed):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 1024, SHAPE).astype(np.uint16)
    raw[0, 0, :3] = (0, 255, 256)  # both sides of the clip
    return raw


def _labels(seed):
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 5, (SHAPE[0], 4, 5)),
                   np.ones((1, 3, 2), np.uint32))


def _spec(name, **extra):
    return dict(raw=f'{name}_inputs.h5', labels=f'{name}_labels.h5',
                raw_key='main', label_key='main', name=name, **extra)


def test_clip_max_gives_the_official_wafer4_intensities(tmp_path):
    raw = _wide_raw(0)
    assert raw.max() > 255 and raw.dtype == np.uint16
    _write(tmp_path / 'a_@.h5', raw, _labels(0))
    _write(tmp_path / 'b_@.h5', raw, _labels(0))
    dataset = EMVolumeDataset(
        [_spec('a'), _spec('b', clip_max=None)], data_root=str(tmp_path),
        clip_max=255, test_mode=True, test_crops='whole')
    clipped, unclipped = (dataset[i]['raw'] for i in range(2))
    official = official_wafer4(raw)
    assert clipped.dtype == np.float32 and clipped.max() == 1.0
    np.testing.assert_allclose(clipped, official, rtol=1e-7, atol=0)
    np.testing.assert_array_equal(
        clipped, official.astype(np.float32))
    # a volume's own clip_max overrides the dataset's: dtype scaling
    np.testing.assert_allclose(unclipped, raw / 65535.0, rtol=1e-7)
    # minmax: the range is that of the clipped values
    minmax = EMVolumeDataset([_spec('a')], data_root=str(tmp_path),
                             normalize='minmax', clip_max=255,
                             test_mode=True, test_crops='whole')
    low = raw.min()
    np.testing.assert_allclose(
        minmax[0]['raw'], (np.minimum(raw, 255) - low) / (255.0 - low),
        rtol=1e-6)
    with pytest.raises(ValueError, match='clip_max'):
        EMVolumeDataset([_spec('a')], data_root=str(tmp_path),
                        clip_max='255', test_mode=True)


def test_mec_test_set_and_evaluator_report_each_wafer(tmp_path):
    """The MEC base config as written: wafer names in the data samples,
    wafer 4 read as the official code, one key per wafer from the
    Table 1 evaluator."""
    cfg = Config.fromfile(str(MEC_BASE))
    dataset_cfg = cfg.seg_test_dataloader.dataset
    dataset_cfg.data_root = str(tmp_path)
    raws = {'4': _wide_raw(1),
            '36_2': np.random.default_rng(2).integers(
                0, 256, SHAPE).astype(np.uint8)}
    for wafer, raw in raws.items():
        _write(tmp_path / 'wafer' / f'wafer{wafer}_@.h5', raw,
               _labels(int(wafer[:1])))
    dataset = DATASETS.build(dataset_cfg)
    assert dataset.clip_max == 255
    evaluator = Evaluator([METRICS.build(m) for m in cfg.seg_evaluator])
    expected = {}
    for i, wafer in enumerate(raws):
        packed = dataset[i]
        sample = packed['data_samples']
        name = f'wafer{wafer}'
        assert sample.volume_name == name
        np.testing.assert_allclose(packed['inputs'][0].numpy(),
                                   official_wafer4(raws[wafer]), rtol=1e-7)
        gt = sample.gt_label.numpy()
        sample.pred_label = torch.from_numpy(np.where(gt == 1, 2, gt))
        evaluator.process([sample])
        expected[name] = skimage_voi(gt, sample.pred_label.numpy(),
                                     ignore_labels=[0]).sum()
    metrics = evaluator.evaluate(len(dataset))
    for name, unwidened in expected.items():
        assert metrics[f'voi_unwidened/{name}'] == pytest.approx(
            unwidened, rel=1e-10)
        for key in ('voi', 'voi_split', 'voi_merge', 'arand'):
            assert f'{key}/{name}' in metrics
    assert metrics['voi'] == pytest.approx(
        (metrics['voi/wafer4'] + metrics['voi/wafer36_2']) / 2)
