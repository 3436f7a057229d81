import pytest
import torch
from mmengine.evaluator import Evaluator

from _helpers import lpips_package_model, save_random_vgg16
from vistok.evaluation.metrics.lpips import LPIPSMetric
from vistok.registry import METRICS
from vistok.structures import DataSample
from vistok.utils.weights import MissingWeightsError


@pytest.fixture(scope='module')
def vgg_file(tmp_path_factory):
    return save_random_vgg16(tmp_path_factory.mktemp('vgg') / 'vgg16.pth')


@pytest.fixture(scope='module')
def reference(vgg_file):
    return lpips_package_model(vgg_file)


def image_set(num=5, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    gt = torch.rand(num, 3, size, size, generator=gen) * 255
    pred = (gt + 40 * torch.randn(gt.shape, generator=gen)).clamp(0, 255)
    return pred, gt


def test_metric_is_mean_of_per_image_lpips(vgg_file, reference):
    pred, gt = image_set()
    evaluator = Evaluator(
        METRICS.build(
            dict(type='LPIPSMetric', trunk_path=vgg_file, batch_size=2)))
    metric = evaluator.metrics[0]
    assert isinstance(metric, LPIPSMetric)
    for start in (0, 3):  # two validation batches of 3 and 2 images
        evaluator.process([
            DataSample(pred_img=p, gt_img=g)
            for p, g in zip(pred[start:start + 3], gt[start:start + 3])
        ])
    with torch.no_grad():  # lpips' own [0, 1] input mode
        expected = reference(pred / 255, gt / 255, normalize=True).flatten()
    torch.testing.assert_close(torch.tensor(metric.results),
                               expected,
                               atol=1e-7,
                               rtol=1e-5)
    result = evaluator.evaluate(5)
    assert result['lpips'] == pytest.approx(expected.mean().item(), rel=1e-5)


def test_metric_of_identical_images_is_zero(vgg_file):
    _, gt = image_set(num=2)
    metric = LPIPSMetric(trunk_path=vgg_file)
    metric.process(None, [dict(pred_img=g.clone(), gt_img=g) for g in gt])
    assert metric.evaluate(2) == dict(lpips=0.0)


def test_metric_checks_files_at_construction_and_loads_lazily(
        tmp_path, vgg_file):
    with pytest.raises(MissingWeightsError, match='absent.pth') as err:
        LPIPSMetric(trunk_path=str(tmp_path / 'absent.pth'))
    assert err.value.key == 'trunk_path'
    with pytest.raises(MissingWeightsError) as err:
        LPIPSMetric(trunk_path=vgg_file, heads_path=str(tmp_path / 'x.pth'))
    assert err.value.key == 'heads_path'

    metric = LPIPSMetric(trunk_path=vgg_file)
    first_conv = torch.load(vgg_file)['features.0.weight']
    assert not torch.equal(metric.lpips.trunk[0].weight, first_conv)
    pred, gt = image_set(num=1)
    metric.process(None, [dict(pred_img=pred[0], gt_img=gt[0])])
    assert torch.equal(metric.lpips.trunk[0].weight, first_conv)
