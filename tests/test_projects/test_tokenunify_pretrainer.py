"""TokenUnifyPretrainer: task inputs and targets, weighted mixing, correct
PSNR, validation masks, and a short overfit run on a stand-in backbone
(projects/TokenUnify/tokenunify/pretrainer.py)."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.optim import OptimWrapper
from mmengine.registry import DefaultScope
from skimage.metrics import peak_signal_noise_ratio

from projects.TokenUnify.tokenunify.emmamba import EMMamba
from projects.TokenUnify.tokenunify.pretrainer import (
    TokenUnifyPretrainer,
    TokenUnifyPSNR,
)
from projects.TokenUnify.tokenunify.tokens import (
    gather_tokens,
    patchify,
    random_token_mask,
    token_grid,
    tokens_to_voxels,
)
from vistok.registry import BACKBONES, METRICS, MODELS
from vistok.structures import DataSample

TOKEN = (4, 16, 16)
SHAPE = (16, 32, 32)  # 4 x 2 x 2 = 16 tokens
NUM_TOKENS = 16
PREPROCESSOR = dict(type='BaseDataPreprocessor')
ALL_TASKS = dict(random=dict(mask_ratio=0.5, fill='zero'), next_token=dict(),
                 next_all=dict())


@BACKBONES.register_module()
class TinyVolumeNetForPretrainTest(nn.Module):
    """Stand-in with EMMamba's contract: ``(B, in, D, H, W)`` → logits
    ``(B, out, D, H, W)``, 1×1×1 ``final_conv``."""

    def __init__(self, in_channels=1, out_channels=1, width=8):
        super().__init__()
        self.out_channels = out_channels
        self.body = nn.Sequential(
            nn.Conv3d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv3d(width, width, 3, padding=1), nn.ReLU())
        self.final_conv = nn.Conv3d(width, out_channels, 1)

    def forward(self, x):
        return self.final_conv(self.body(x))


class Recorder(nn.Module):
    """Records its inputs, outputs constant logits (sigmoid = 0.5)."""

    def __init__(self, out_channels=1):
        super().__init__()
        self.out_channels = out_channels
        self.bias = nn.Parameter(torch.zeros(()))
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.bias.expand(x.shape[0], self.out_channels,
                                *x.shape[2:]) * 1.0


def model_with(tasks, backbone=None, **kwargs):
    return TokenUnifyPretrainer(backbone=backbone or Recorder(), tasks=tasks,
                                data_preprocessor=PREPROCESSOR, **kwargs)


def clean_crops(batch=2, seed=0):
    """Positive ``(B, 1, 16, 32, 32)`` volumes in [0.1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return 0.1 + 0.9 * torch.rand(batch, 1, *SHAPE, generator=g)


def smooth_crops(batch=4, seed=0):
    """Random smooth volumes, min-max scaled to [0, 1] per crop."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 1, 4, 4, 4, generator=g)
    x = F.interpolate(coarse, size=SHAPE, mode='trilinear',
                      align_corners=False)
    low = x.amin((1, 2, 3, 4), keepdim=True)
    high = x.amax((1, 2, 3, 4), keepdim=True)
    return (x - low) / (high - low)


def prefix_of(corrupted, clean):
    """Per-sample prefix length recovered from a zero-filled input."""
    shown = patchify(corrupted, TOKEN).flatten(2).ne(0).all(2)
    assert torch.equal(patchify(corrupted, TOKEN)[shown],
                       patchify(clean, TOKEN)[shown])
    return shown.sum(1)


# ---------------------------------------------------------------- config
def test_builds_from_config_and_validates_tasks():
    with DefaultScope.overwrite_default_scope('vistok'):
        model = MODELS.build(dict(
            type='TokenUnifyPretrainer',
            backbone=dict(type='TinyVolumeNetForPretrainTest'),
            tasks=dict(random=dict(mask_ratio_range=[0.2, 0.8])),
            data_preprocessor=PREPROCESSOR))
    assert model.tasks['random'].mask_ratio_range == (0.2, 0.8)
    assert model.task_weights == dict(random=1.0)
    assert model.val_mask_ratio == 0.5  # middle of the range
    with pytest.raises(ValueError, match='subset'):
        model_with(dict(masked=dict()))
    with pytest.raises(ValueError, match='exactly one'):
        model_with(dict(random=dict()))
    with pytest.raises(TypeError, match='tasks.next_all'):
        model_with(dict(next_all=dict(mask_ratio=0.4)))
    with pytest.raises(ValueError, match='tasks.next_token.channel=1'):
        model_with(dict(next_token=dict(channel=1)))
    with pytest.raises(ValueError, match='prefix is set'):
        model_with(dict(random=dict(mask_ratio=0.4)), prefix=dict())
    with pytest.raises(ValueError, match='prefix.max_length'):
        model_with(dict(next_all=dict()), prefix=dict(min_length=3,
                                                      max_length=2))


def test_set_task_weights_replaces_and_checks():
    model = model_with(dict(random=dict(mask_ratio=0.4), next_all=dict()))
    model.set_task_weights(dict(random=0.73, next_token=0.0))
    assert model.task_weights == dict(random=0.73, next_all=0.0)
    with pytest.raises(ValueError, match='next_token'):
        model.set_task_weights(dict(next_token=0.18))
    with pytest.raises(ValueError, match='unknown task'):
        model.set_task_weights(dict(mim=1.0))
    with pytest.raises(ValueError, match='>= 0'):
        model.set_task_weights(dict(random=-1.0))
    model.set_task_weights(dict(random=0.0))
    with pytest.raises(ValueError, match='nothing to train'):
        model.loss(clean_crops())


# ---------------------------------------------------------------- tasks
@pytest.mark.parametrize('loss_on', ['all', 'masked'])
def test_random_task_input_and_loss(loss_on):
    model = model_with(dict(random=dict(mask_ratio=0.25, fill='zero',
                                        loss_on=loss_on)))
    clean = clean_crops()
    torch.manual_seed(7)
    losses = model.loss(clean)
    torch.manual_seed(7)  # the model draws the mask first, from global RNG
    mask = random_token_mask(2, NUM_TOKENS, mask_ratio=0.25)
    voxels = tokens_to_voxels(mask, token_grid(SHAPE, TOKEN), TOKEN)
    corrupted, = model.backbone.inputs
    assert torch.equal(corrupted, torch.where(voxels, 0.0, clean))
    error = (0.5 - clean)**2
    expected = error[voxels.expand_as(error)].mean() if loss_on == 'masked' \
        else error.mean()
    assert torch.allclose(losses['mse_random'], expected, rtol=1e-6)
    assert torch.allclose(losses['loss_random'], expected, rtol=1e-6)
    assert set(losses) == {'loss_random', 'mse_random', 'weight_random'}


def test_perturbed_inputs_are_corrupted_and_the_clean_target_regressed():
    """With input perturbations the samples carry the clean crop as
    ``gt_volume``: the tasks corrupt the (perturbed) inputs and regress the
    clean crop, in training and in predict."""
    model = model_with(ALL_TASKS, prefix=dict(fill='zero'),
                       task_weights=dict(random=1.0, next_token=1.0,
                                         next_all=1.0))
    clean, perturbed = clean_crops(seed=0), clean_crops(seed=1)
    samples = [DataSample(gt_volume=c) for c in clean]
    torch.manual_seed(7)
    losses = model.loss(perturbed, samples)
    torch.manual_seed(7)
    mask = random_token_mask(2, NUM_TOKENS, mask_ratio=0.5)
    voxels = tokens_to_voxels(mask, token_grid(SHAPE, TOKEN), TOKEN)
    random_input, prefix_input = model.backbone.inputs
    assert torch.equal(random_input, torch.where(voxels, 0.0, perturbed))
    lengths = prefix_of(prefix_input, perturbed)
    expected = ((0.5 - clean)**2).mean()
    assert torch.allclose(losses['mse_random'], expected, rtol=1e-6)
    assert torch.allclose(losses['mse_next_all'], expected, rtol=1e-6)
    token_pred = torch.sigmoid(model.next_token_head(
        torch.zeros(2, 1, *SHAPE), lengths))
    assert torch.allclose(
        losses['mse_next_token'],
        ((token_pred - gather_tokens(clean, lengths, TOKEN))**2).mean(),
        rtol=1e-6)
    out = model.predict(perturbed, [DataSample(gt_volume=c) for c in clean])
    assert all(torch.equal(o.gt_volume, c) for o, c in zip(out, clean))
    with pytest.raises(ValueError, match='1 of 2 samples carry a gt_volume'):
        model.loss(perturbed, [samples[0], DataSample()])


@pytest.mark.parametrize('loss_on', ['all', 'masked'])
def test_next_token_and_next_all_share_one_prefix_pass(loss_on):
    model = model_with(dict(next_token=dict(), next_all=dict(loss_on=loss_on)),
                       prefix=dict(fill='zero'),
                       task_weights=dict(next_token=0.18, next_all=0.09))
    clean = clean_crops(batch=6)
    losses = model.loss(clean)
    corrupted, = model.backbone.inputs  # one pass for both tasks
    lengths = prefix_of(corrupted, clean)
    assert lengths.min() >= 1 and lengths.max() <= NUM_TOKENS - 1
    next_tokens = gather_tokens(clean, lengths, TOKEN)
    for b, n in enumerate(lengths.tolist()):  # token n in raster order
        assert torch.equal(next_tokens[b], patchify(clean, TOKEN)[b, n])
    # token n's prediction comes from the next-token head reading the output
    token_pred = torch.sigmoid(model.next_token_head(
        torch.zeros(6, 1, *SHAPE), lengths))
    expected_next = ((token_pred - next_tokens)**2).mean()
    assert torch.allclose(losses['mse_next_token'], expected_next, rtol=1e-6)
    error = patchify((0.5 - clean)**2, TOKEN).flatten(2)
    if loss_on == 'masked':
        later = torch.arange(NUM_TOKENS)[None] >= lengths[:, None]
        expected_all = error[later].mean()
    else:
        expected_all = error.mean()
    assert torch.allclose(losses['mse_next_all'], expected_all, rtol=1e-6)
    assert torch.allclose(losses['loss_next_token'], 0.18 * expected_next)
    assert torch.allclose(losses['loss_next_all'], 0.09 * expected_all)


def test_curriculum_sum_and_zero_weight_tasks_are_skipped():
    model = model_with(ALL_TASKS)
    model.set_task_weights(dict(random=0.73, next_token=0.18, next_all=0.09))
    losses = model.loss(clean_crops())
    assert len(model.backbone.inputs) == 2  # random pass + prefix pass
    total, log_vars = model.parse_losses(losses)
    expected = sum(w * losses[f'mse_{t}'] for t, w in
                   dict(random=0.73, next_token=0.18, next_all=0.09).items())
    assert torch.allclose(total, expected)
    assert float(log_vars['weight_next_all']) == pytest.approx(0.09)

    model.backbone.inputs.clear()
    model.set_task_weights(dict(next_token=1.0))  # a sequential stage
    losses = model.loss(clean_crops())
    assert len(model.backbone.inputs) == 1
    assert {k for k in losses if k.startswith('loss')} == {'loss_next_token'}
    assert float(losses['weight_random']) == 0.0


def test_dedicated_next_token_channel():
    model = model_with(dict(next_token=dict(channel=1), next_all=dict()),
                       backbone=Recorder(out_channels=2))
    with torch.no_grad():
        model.backbone.bias.fill_(2.0)
    clean = clean_crops()
    losses = model.loss(clean)
    pred = torch.sigmoid(torch.tensor(2.0))
    assert torch.allclose(losses['mse_next_all'], ((pred - clean)**2).mean())


def test_learned_fill_is_trained():
    model = model_with(dict(random=dict(mask_ratio=0.5, fill='learned')),
                       backbone=TinyVolumeNetForPretrainTest())
    assert model.mask_token.shape == (1, *TOKEN)
    model.loss(clean_crops())['loss_random'].backward()
    assert model.mask_token.grad is not None
    assert model.mask_token.grad.abs().sum() > 0


# ---------------------------------------------------------------- PSNR
def metric_results(samples, **kwargs):
    """Per-crop ``(psnr_all, psnr_masked)`` of :class:`TokenUnifyPSNR`."""
    metric = TokenUnifyPSNR(**kwargs)
    metric.process(None, [
        s.to_dict() if isinstance(s, DataSample) else s for s in samples
    ])
    return metric.results


def test_psnr_metric_is_the_true_psnr_not_the_official_half():
    pred, target = torch.rand(2, 1, 4, 8, 8), torch.rand(2, 1, 4, 8, 8)
    mask = torch.zeros(2, 1, 4, 8, 8, dtype=torch.bool)
    mask[0, :, :2] = True
    results = metric_results([
        dict(pred_volume=pred[i], gt_volume=target[i], voxel_mask=mask[i])
        for i in range(2)
    ])
    mse = ((pred - target)**2).double().mean((1, 2, 3, 4))
    psnr_all = torch.tensor([r[0] for r in results], dtype=torch.float64)
    assert torch.allclose(psnr_all, 10 * torch.log10(1 / mse))
    official = 10 * torch.log10(1 / mse.sqrt())  # engine_pretrain calc_psnr
    assert torch.allclose(psnr_all, 2 * official)
    masked_mse = ((pred[0, :, :2] - target[0, :, :2])**2).double().mean()
    assert results[0][1] == pytest.approx(
        10 * math.log10(1 / masked_mse.item()))
    assert math.isnan(results[1][1])  # empty mask
    same = dict(pred_volume=target[0], gt_volume=target[0],
                voxel_mask=mask[0])
    assert metric_results([same], max_psnr=80.0) == [(80.0, 80.0)]
    # data_range enters as data_range²
    halved = metric_results([
        dict(pred_volume=pred[0] / 2, gt_volume=target[0] / 2,
             voxel_mask=mask[0])
    ], data_range=0.5)
    assert halved[0] == pytest.approx(results[0])


def test_predict_returns_volumes_and_masks_with_fixed_validation_masks():
    model = model_with(dict(random=dict(mask_ratio_range=(0.2, 0.8),
                                        fill='noise')),
                       backbone=TinyVolumeNetForPretrainTest(),
                       val_mask_ratio=0.25, val_seed=3)
    model.eval()
    clean = smooth_crops(batch=3)
    samples = [DataSample(metainfo=dict(sample_idx=i)) for i in (4, 9, 2)]
    out = model.predict(clean, samples)
    assert out is samples
    grid = token_grid(SHAPE, TOKEN)
    results = metric_results(out)
    for i, sample in enumerate(out):
        assert sample.token_mask.sum() == 4  # round(0.25 * 16)
        assert torch.equal(sample.token_mask, model.validation_mask(
            NUM_TOKENS, sample.metainfo['sample_idx'])[0])
        voxels = tokens_to_voxels(sample.token_mask[None], grid, TOKEN)[0]
        assert torch.equal(sample.voxel_mask, voxels)
        assert torch.equal(sample.gt_volume, clean[i])
        pred = sample.pred_volume
        assert pred.shape == (1, *SHAPE) and 0 <= pred.min() <= pred.max() <= 1
        # the metric's PSNRs against scikit-image's, over all voxels and over
        # the masked ones
        pred, gt = pred.double().numpy(), clean[i].double().numpy()
        mask = voxels.numpy()
        assert results[i][0] == pytest.approx(
            peak_signal_noise_ratio(gt, pred, data_range=1.0), rel=1e-12)
        assert results[i][1] == pytest.approx(
            peak_signal_noise_ratio(gt[mask], pred[mask], data_range=1.0),
            rel=1e-12)
    # masks follow sample_idx, not the batch position; repeated runs agree
    again = model.predict(clean[[1, 0]], [DataSample(metainfo=dict(
        sample_idx=i)) for i in (9, 4)])
    assert torch.equal(again[0].token_mask, out[1].token_mask)
    assert metric_results(again)[1] == pytest.approx(results[0])
    assert not torch.equal(out[0].token_mask, out[1].token_mask)

    metric = METRICS.build(dict(type='TokenUnifyPSNR'))
    metric.process(None, [s.to_dict() for s in out])
    result = metric.evaluate(3)
    assert result['pretrain/psnr_all'] == pytest.approx(
        np.mean([r[0] for r in results]))
    assert result['pretrain/psnr_masked'] == pytest.approx(
        np.mean([r[1] for r in results]))


def test_psnr_metric_skips_crops_without_masked_voxels():
    metric = TokenUnifyPSNR()
    result = metric.compute_metrics([(20.0, 30.0), (24.0, float('nan'))])
    assert result == dict(psnr_all=22.0, psnr_masked=30.0)


def test_predict_needs_the_random_task():
    model = model_with(dict(next_all=dict()))
    with pytest.raises(ValueError, match='tasks.random'):
        model.predict(clean_crops())


# ---------------------------------------------------------------- training
def test_total_loss_falls_when_overfitting_a_few_smooth_crops():
    torch.manual_seed(0)
    model = model_with(dict(random=dict(mask_ratio_range=(0.2, 0.8)),
                            next_token=dict(), next_all=dict()),
                       backbone=TinyVolumeNetForPretrainTest(width=8))
    model.set_task_weights(dict(random=0.73, next_token=0.18, next_all=0.09))
    wrapper = OptimWrapper(torch.optim.Adam(model.parameters(), lr=1e-2))
    data = dict(inputs=smooth_crops(batch=2))

    def total_with_fixed_masks():
        torch.manual_seed(123)  # same masks, prefixes and noise each time
        with torch.no_grad():
            return float(model.parse_losses(model.loss(data['inputs']))[0])

    before = total_with_fixed_masks()
    for _ in range(50):
        log_vars = model.train_step(data, wrapper)
    assert float(log_vars['nonfinite_skips']) == 0
    assert total_with_fixed_masks() < 0.7 * before


def test_runs_on_a_tiny_emmamba():
    backbone = EMMamba(arch=None, out_channels=1,
                               feat_size=(4, 8, 8, 16), hidden_size=16)
    model = model_with(dict(random=dict(mask_ratio=0.4), next_token=dict(),
                            next_all=dict(loss_on='masked')),
                       backbone=backbone)
    losses = model.loss(clean_crops())
    total, _ = model.parse_losses(losses)
    total.backward()
    assert torch.isfinite(total)
    assert backbone.final_conv.weight.grad.abs().sum() > 0


def test_default_volume_preprocessor_and_val_step():
    from mmengine.dataset import pseudo_collate
    model = TokenUnifyPretrainer(backbone=TinyVolumeNetForPretrainTest(),
                                 tasks=dict(random=dict(mask_ratio=0.25)))
    assert type(model.data_preprocessor).__name__ == 'VolumeDataPreprocessor'
    crops = clean_crops(batch=2)
    batch = pseudo_collate([
        dict(inputs=crops[i], data_samples=DataSample(metainfo=dict(
            sample_idx=i + 5))) for i in range(2)])
    out = model.val_step(batch)
    assert [s.metainfo['sample_idx'] for s in out] == [5, 6]
    direct = model.predict(crops, [DataSample(metainfo=dict(sample_idx=i))
                                   for i in (5, 6)])
    for key in ('pred_volume', 'gt_volume', 'voxel_mask'):
        assert all(torch.equal(a.get(key), b.get(key))
                   for a, b in zip(out, direct)), key
    assert metric_results(out) == metric_results(direct)
