import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.optim import OptimWrapper
from skimage.metrics import variation_of_information

import vistok.models.segmentors.watershed  # noqa: F401  (registers)
from vistok.datasets.em.affinity import affinities_from_labels
from vistok.evaluation.metrics.segmentation import VOI, AdaptedRandError
from vistok.models.losses.class_balanced_mse import ClassBalancedMSELoss
from vistok.models.segmentors.affinity_segmentor import AffinitySegmentor
from vistok.models.segmentors.sliding_window import sliding_window_inference
from vistok.registry import BACKBONES, MODELS
from vistok.structures import DataSample


@BACKBONES.register_module(name='TinyAffinityConvNetForTest', force=True)
class TinyAffinityConvNet(nn.Module):
    """Small 3-D conv stand-in for EMMamba: (B, 1, D, H, W) -> logits."""

    def __init__(self, hidden=4, out_channels=3):
        super().__init__()
        self.out_channels = out_channels
        self.body = nn.Sequential(
            nn.Conv3d(1, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv3d(hidden, hidden, 3, padding=1), nn.ReLU())
        self.final_conv = nn.Conv3d(hidden, out_channels, 1)

    def forward(self, x):
        return self.final_conv(self.body(x))


@BACKBONES.register_module(name='OracleAffinityNetForTest', force=True)
class OracleAffinityNet(nn.Module):
    """Affinity logits of a binary cell image (1 inside cells, 0 on
    membranes): ``scale · (x_p + x_{p - e_d} - 1.5)`` with zero padding,
    so the sigmoid is ~1 iff both voxels are inside a cell."""
    out_channels = 3

    def __init__(self, scale=10.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, x):
        padded = F.pad(x, (1, 0, 1, 0, 1, 0))
        here = padded[:, :, 1:, 1:, 1:]
        before = [padded[:, :, :-1, 1:, 1:], padded[:, :, 1:, :-1, 1:],
                  padded[:, :, 1:, 1:, :-1]]
        return torch.cat([self.scale * (here + b - 1.5) for b in before], 1)


def affinities_of(labels):
    """Nearest-neighbour affinities (waterz convention): channel d at p is
    1 iff p and p - e_d share a non-zero label."""
    return affinities_from_labels(labels)[0]


def cell_volume(shape=(8, 40, 40), num_cells=6, seed=0):
    """Voronoi cells across z, one of them cut by an unlabelled slice;
    labels are border-widened (a voxel seeing two labels in its 3×3
    in-plane window becomes 0), as the official data pipeline does."""
    rng = np.random.default_rng(seed)
    depth, height, width = shape
    seeds = rng.uniform(0, [height, width], (num_cells, 2))
    y, x = np.mgrid[:height, :width]
    nearest = np.argmin((y[None] - seeds[:, 0, None, None])**2 +
                        (x[None] - seeds[:, 1, None, None])**2, axis=0)
    labels = np.repeat(nearest[None] + 1, depth, axis=0)
    cut = labels == 1
    cut[:depth // 2] = False
    labels[cut] += num_cells
    labels[depth // 2][labels[depth // 2] == 1 + num_cells] = 0
    padded = np.pad(labels, ((0, 0), (1, 1), (1, 1)), mode='edge')
    windows = np.stack([
        padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
        for dy in (-1, 0, 1) for dx in (-1, 0, 1)
    ])
    labels[(windows != labels[None]).any(0)] = 0
    return labels


def test_loss_is_the_class_balanced_mse_of_the_sigmoid():
    torch.manual_seed(0)
    model = AffinitySegmentor(
        backbone=dict(type='TinyAffinityConvNetForTest'))
    inputs = torch.rand(2, 1, 4, 8, 8)
    samples = [
        DataSample(gt_affinity=(torch.rand(3, 4, 8, 8) > 0.3).float(),
                   affinity_mask=(torch.rand(3, 4, 8, 8) > 0.1).float())
        for _ in range(2)
    ]
    losses = model(inputs, samples, mode='loss')
    assert list(losses) == ['loss_affinity']
    expected = ClassBalancedMSELoss()(
        torch.sigmoid(model.backbone(inputs)),
        torch.stack([s.gt_affinity for s in samples]),
        torch.stack([s.affinity_mask for s in samples]))
    torch.testing.assert_close(losses['loss_affinity'], expected)
    affinities = model(inputs, mode='tensor')
    assert affinities.shape == (2, 3, 4, 8, 8)
    assert ((affinities > 0) & (affinities < 1)).all()


def test_train_step_fits_the_affinities_of_a_label_volume():
    torch.manual_seed(0)
    labels = cell_volume((4, 16, 16), num_cells=3)
    image = torch.from_numpy((labels > 0).astype(np.float32))[None]
    sample = DataSample(gt_affinity=torch.from_numpy(affinities_of(labels)))
    model = MODELS.build(
        dict(type='AffinitySegmentor',
             backbone=dict(type='TinyAffinityConvNetForTest', hidden=8)))
    wrapper = OptimWrapper(torch.optim.Adam(model.parameters(), lr=0.02))
    data = dict(inputs=image[None], data_samples=[sample])
    first = model.train_step(data, wrapper)['loss_affinity'].item()
    for _ in range(40):
        last = model.train_step(data, wrapper)['loss_affinity'].item()
    assert last < 0.5 * first


def test_predict_segments_a_volume_by_sliding_windows():
    labels = cell_volume()
    assert np.unique(labels).tolist() == list(range(8))  # 0 + 7 cells
    image = torch.from_numpy((labels > 0).astype(np.float32))[None]
    model = AffinitySegmentor(
        backbone=dict(type='OracleAffinityNetForTest'),
        postprocessor=dict(type='WatershedAgglomeration'),
        # the oracle is wrong on the first slice / row / column of each
        # window (zero padding); a Gaussian of σ = window / 4 keeps every
        # weight above MONAI's 1e-3 floor (which would tie a wrong window at
        # volume corners) and gives the wrong window under 30% of a voxel
        inference=dict(window=(4, 16, 16), overlap=0.5, batch_size=4,
                       sigma_scale=0.25))
    gt = torch.from_numpy(labels)
    samples = [DataSample(gt_label=gt, metainfo=dict(volume_name='v0'))]
    data = dict(inputs=image[None], data_samples=samples)
    out = model.test_step(data)
    # ground truth and metainfo are kept
    assert out[0].volume_name == 'v0' and torch.equal(out[0].gt_label, gt)
    affinities = out[0].pred_affinity
    assert affinities.shape == (3, 8, 40, 40)
    torch.testing.assert_close(
        affinities,
        sliding_window_inference(image, model.affinities, (4, 16, 16),
                                 overlap=0.5, sigma_scale=0.25))
    oracle = affinities_of((labels > 0).astype(np.int64))
    assert ((affinities.numpy() > 0.5) == (oracle > 0.5)).all()
    pred = out[0].pred_label
    assert pred.dtype == torch.int64 and pred.shape == (8, 40, 40)
    np.testing.assert_allclose(
        variation_of_information(labels, pred.numpy(), ignore_labels=[0]),
        [0, 0], atol=1e-12)
    # the metrics read the samples as the mmengine Evaluator passes them
    for metric, key in ((VOI(), 'voi'), (AdaptedRandError(), 'arand')):
        metric.process(data, [s.to_dict() for s in out])
        assert metric.compute_metrics(metric.results)[key] == pytest.approx(
            0, abs=1e-12)


def test_default_data_preprocessor_stacks_collated_volumes():
    torch.manual_seed(0)
    model = AffinitySegmentor(backbone=TinyAffinityConvNet())
    assert type(model.data_preprocessor).__name__ == 'VolumeDataPreprocessor'
    data = dict(
        inputs=[torch.rand(1, 4, 8, 8) for _ in range(2)],
        data_samples=[
            DataSample(gt_affinity=torch.ones(3, 4, 8, 8)) for _ in range(2)
        ])
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    log_vars = model.train_step(data, wrapper)
    assert torch.isfinite(log_vars['loss_affinity'])


def test_predict_without_window_or_postprocessor():
    torch.manual_seed(0)
    model = AffinitySegmentor(
        backbone=TinyAffinityConvNet())
    inputs = torch.rand(2, 1, 4, 8, 8)
    out = model(inputs, mode='predict')
    assert len(out) == 2 and 'pred_label' not in out[0]
    torch.testing.assert_close(out[1].pred_affinity,
                               model.affinities(inputs)[1])


def test_errors():
    with pytest.raises(ValueError, match='3 affinity channels'):
        AffinitySegmentor(
            backbone=dict(type='TinyAffinityConvNetForTest', out_channels=1))
    with pytest.raises(ValueError, match='unknown keys'):
        AffinitySegmentor(
            backbone=dict(type='TinyAffinityConvNetForTest'),
            inference=dict(roi_size=(4, 4, 4)))
    model = AffinitySegmentor(
        backbone=dict(type='TinyAffinityConvNetForTest'))
    with pytest.raises(KeyError, match='gt_affinity'):
        model(torch.rand(1, 1, 4, 8, 8), [DataSample()], mode='loss')
    with pytest.raises(ValueError, match='mode'):
        model(torch.rand(1, 1, 4, 8, 8), mode='logits')
