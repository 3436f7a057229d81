import hashlib
import os.path as osp

import numpy as np
import pytest
import scipy.linalg
import torch
import torch_fidelity
import torchvision
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_inceptionv3 import (
    FeatureExtractorInceptionV3,
)

from vistok.evaluation.feature_extractors import (
    InceptionV3Compat,
    PytorchFIDInception,
    RandomConvFeatures,
    torch_fidelity_extractor,
)
from vistok.evaluation.metrics.fid import (
    FrechetInceptionDistance,
    fid_protocol_fingerprint,
)
from vistok.registry import FEATURE_EXTRACTORS, METRICS
from vistok.utils.weights import MissingWeightsError

EXTRACTOR = dict(type='RandomConvFeatures', feature_dim=16, num_classes=10)
KID_DEGREE, KID_COEF0 = 3, 1.0


def make_samples(num, noise=0.0, seed=0, size=24):
    """``num`` samples with float [0, 255] ``gt_img`` and ``pred_img`` (the
    ground truth plus Gaussian noise, not rounded)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size)[None, None] * rng.uniform(
        0.2, 1, size=(num, 3, 1, 1))
    gt = np.clip(ramp + rng.normal(0, 40, (num, 3, size, size)), 0, 255)
    pred = np.clip(gt + rng.normal(0, noise, gt.shape), 0, 255)
    return [dict(pred_img=torch.from_numpy(p).float(),
                 gt_img=torch.from_numpy(g).float())
            for p, g in zip(pred, gt)]


def run(metric, samples, batch=8):
    for i in range(0, len(samples), batch):
        metric.process(None, samples[i:i + batch])
    return metric.evaluate(size=len(samples))


def fid_metric(tmp_path, **kwargs):
    kwargs.setdefault('feature_extractor', EXTRACTOR)
    return FrechetInceptionDistance(cache_dir=str(tmp_path / 'fid_cache'),
                                    **kwargs)


def direct_fid(x, y):
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2)**2).sum() + np.trace(s1 + s2 - 2 * covmean))


def direct_kid(x, y):
    """Unbiased MMD² with k(a, b) = (aᵀb / D + 1)³ (Bińkowski et al. Eq. 4)."""
    m, d = len(x), x.shape[1]
    kxx = (x @ x.T / d + KID_COEF0)**KID_DEGREE
    kyy = (y @ y.T / d + KID_COEF0)**KID_DEGREE
    kxy = (x @ y.T / d + KID_COEF0)**KID_DEGREE
    off = ~np.eye(m, dtype=bool)
    return (kxx[off].sum() + kyy[off].sum()) / (m * (m - 1)) - \
        2 * kxy.sum() / m**2


def direct_is(logits):
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    kl = (p * (np.log(p) - np.log(p.mean(0, keepdims=True)))).sum(1)
    return float(np.exp(kl.mean()))


def features_of(samples, key):
    extractor = FEATURE_EXTRACTORS.build(EXTRACTOR)
    images = torch.stack([s[key] for s in samples]).round().to(torch.uint8)
    return extractor(images)


def test_registered_and_rfid_of_a_set_against_itself(tmp_path):
    assert isinstance(METRICS.build(dict(
        type='FrechetInceptionDistance', feature_extractor=EXTRACTOR)),
        FrechetInceptionDistance)
    same = run(fid_metric(tmp_path), make_samples(48))
    assert abs(same['fid']) < 1e-3
    assert isinstance(same['fid_protocol'], str)
    assert len(same['fid_protocol']) == 12
    slightly = run(fid_metric(tmp_path), make_samples(48, noise=10))['fid']
    noisy = run(fid_metric(tmp_path), make_samples(48, noise=30))['fid']
    assert noisy > slightly > 1e-5


def test_fid_kid_is_match_direct_computations(tmp_path):
    samples = make_samples(40, noise=25)
    metric = fid_metric(tmp_path, metrics=('fid', 'kid', 'is'),
                        kid_subset_size=1000, kid_subsets=2, is_splits=1)
    out = run(metric, samples)
    pred = features_of(samples, 'pred_img')
    gt = features_of(samples, 'gt_img')
    x, y = pred['features'].double().numpy(), gt['features'].double().numpy()
    assert out['fid'] == pytest.approx(direct_fid(x, y), rel=1e-6, abs=1e-9)
    # subset size clamped to 40 = all images: a permutation, same MMD
    assert out['kid'] == pytest.approx(direct_kid(x, y), rel=1e-6, abs=1e-12)
    assert out['kid_std'] == pytest.approx(0, abs=1e-12)
    logits = pred['logits'].double().numpy()
    assert out['is'] == pytest.approx(direct_is(logits), rel=1e-9)

    # small subsets / several splits: torch-fidelity's rng draws, replayed
    metric = fid_metric(tmp_path, metrics=('kid', 'is'), kid_subset_size=6,
                        kid_subsets=3, is_splits=4, rng_seed=7)
    out = run(metric, samples)
    rng = np.random.RandomState(7)
    mmds = []
    for _ in range(3):
        a = x[rng.choice(40, 6, replace=False)]
        b = y[rng.choice(40, 6, replace=False)]
        mmds.append(direct_kid(a, b))
    assert out['kid'] == pytest.approx(np.mean(mmds), rel=1e-6)
    assert out['kid_std'] == pytest.approx(np.std(mmds), rel=1e-5)
    shuffled = logits[np.random.RandomState(7).permutation(40)]
    scores = [direct_is(shuffled[i * 10:(i + 1) * 10]) for i in range(4)]
    assert out['is'] == pytest.approx(np.mean(scores), rel=1e-9)
    assert out['is_std'] == pytest.approx(np.std(scores), rel=1e-7)


class Uint8Images(Dataset):

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def test_agrees_with_torch_fidelity_calculate_metrics(tmp_path):
    name = 'vistok-test-random-conv'
    if name not in torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(
            name, torch_fidelity_extractor(EXTRACTOR))
    samples = make_samples(32, noise=20)
    out = run(fid_metric(tmp_path, metrics=('fid', 'is', 'kid'),
                         kid_subset_size=16, kid_subsets=5, is_splits=2),
              samples)
    pred = torch.stack([s['pred_img'] for s in samples]).round().byte()
    gt = torch.stack([s['gt_img'] for s in samples]).round().byte()
    ref = torch_fidelity.calculate_metrics(
        input1=Uint8Images(pred), input2=Uint8Images(gt), fid=True, isc=True,
        kid=True, kid_subset_size=16, kid_subsets=5, isc_splits=2,
        feature_extractor=name, cache=False, cuda=False, verbose=False,
        save_cpu_ram=True, batch_size=8, cache_root=str(tmp_path / 'tf'))
    assert out['fid'] == pytest.approx(ref['frechet_inception_distance'],
                                       rel=1e-4)
    assert out['is'] == pytest.approx(ref['inception_score_mean'], rel=1e-5)
    assert out['kid'] == pytest.approx(
        ref['kernel_inception_distance_mean'], rel=1e-3)


def test_streaming_and_gathering_equal_one_batch(tmp_path):
    samples = make_samples(30, noise=20)
    one = run(fid_metric(tmp_path), samples, batch=30)['fid']
    assert run(fid_metric(tmp_path), samples, batch=7)['fid'] == \
        pytest.approx(one, rel=1e-9)
    # two ranks: mmengine's collect_results concatenates their results
    rank0, rank1 = fid_metric(tmp_path), fid_metric(tmp_path)
    rank0.process(None, samples[:13])
    rank1.process(None, samples[13:])
    gathered = rank0.compute_metrics(rank0.results + rank1.results)
    assert gathered['fid'] == pytest.approx(one, rel=1e-9)


def test_fingerprint_changes_with_protocol():
    base = dict(reference='imagenet-val', num_images=50000,
                extractor_name='pt_inception-2015-12-05',
                extractor_weights_sha256='ab' * 32,
                protocol=dict(crop='center-256', resize_filter='bicubic'))
    fingerprint, short = fid_protocol_fingerprint(**base)
    assert fingerprint['crop'] == 'center-256'
    assert fingerprint['uint8_rounding'] is True
    assert fid_protocol_fingerprint(**dict(base))[1] == short
    other_crop = dict(base, protocol=dict(crop='none',
                                          resize_filter='bicubic'))
    assert fid_protocol_fingerprint(**other_crop)[1] != short
    assert fid_protocol_fingerprint(**dict(base, num_images=10000))[1] != \
        short
    assert fid_protocol_fingerprint(**dict(
        base, extractor_weights_sha256='cd' * 32))[1] != short


class CountingExtractor(RandomConvFeatures):

    def __init__(self):
        super().__init__(feature_dim=16, num_classes=10)
        self.images_seen = 0

    def forward(self, images):
        self.images_seen += len(images)
        return super().forward(images)


def test_reference_cache_written_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    samples = make_samples(24, noise=20)
    reference = dict(name='toy set/val', num_images=24)
    protocol = dict(crop='center-24')
    first_extractor = CountingExtractor()
    first = run(fid_metric(tmp_path, feature_extractor=first_extractor,
                           reference=reference, protocol=protocol), samples)
    assert first_extractor.images_seen == 48
    files = list((tmp_path / 'fid_cache').iterdir())
    assert len(files) == 1 and files[0].name.startswith('toy_set_val-')
    assert files[0].name == f"toy_set_val-{first['fid_protocol']}.npz"
    mtime = osp.getmtime(files[0])

    second_extractor = CountingExtractor()
    second = run(fid_metric(tmp_path, feature_extractor=second_extractor,
                            reference=reference, protocol=protocol), samples)
    assert second_extractor.images_seen == 24  # predictions only
    assert second == first
    assert osp.getmtime(files[0]) == mtime
    same_samples = run(fid_metric(tmp_path), samples)
    assert same_samples['fid'] == pytest.approx(first['fid'], rel=1e-9)
    assert same_samples['fid_protocol'] != first['fid_protocol']

    # another protocol does not reuse the file
    third = run(fid_metric(tmp_path, reference=reference,
                           protocol=dict(crop='none')), samples)
    assert third['fid_protocol'] != first['fid_protocol']
    assert len(list((tmp_path / 'fid_cache').iterdir())) == 2
    # precomputed statistics file
    from_file = run(fid_metric(tmp_path, reference=dict(
        stats_path=str(files[0]))), samples)
    assert from_file['fid'] == pytest.approx(first['fid'], rel=1e-12)
    # the declared size of a cached reference is checked
    with pytest.raises(ValueError, match='num_images=24'):
        run(fid_metric(tmp_path, reference=reference, protocol=protocol),
            samples[:20])
    assert not (tmp_path / 'torch_home').exists()


def test_missing_weights_error_at_construction(tmp_path):
    path = str(tmp_path / 'pt_inception-2015-12-05-6726825d.pth')
    with pytest.raises(MissingWeightsError) as err:
        FrechetInceptionDistance(feature_extractor=dict(
            type='PytorchFIDInception', weights_path=path))
    message = str(err.value)
    assert path in message and 'feature_extractor.weights_path' in message
    assert 'pytorch-fid/releases' in message
    with pytest.raises(MissingWeightsError, match='weights-inception-2015'):
        FrechetInceptionDistance(feature_extractor=dict(
            type='InceptionV3Compat'))
    with pytest.raises(ValueError, match='subset'):
        fid_metric(tmp_path, metrics=('fid', 'precision'))


# pytorch-fid's FID Inception (torchvision inception_v3, 1008 classes, no
# aux logits): tensor names and shapes of pt_inception-2015-12-05-6726825d.pth
PYTORCH_FID_LAYOUT = {
    'Conv2d_1a_3x3.conv.weight': (32, 3, 3, 3),
    'Conv2d_1a_3x3.bn.running_var': (32, ),
    'Conv2d_2b_3x3.conv.weight': (64, 32, 3, 3),
    'Conv2d_4a_3x3.conv.weight': (192, 80, 3, 3),
    'Mixed_5b.branch5x5_2.conv.weight': (64, 48, 5, 5),
    'Mixed_5b.branch_pool.conv.weight': (32, 192, 1, 1),
    'Mixed_6a.branch3x3.conv.weight': (384, 288, 3, 3),
    'Mixed_6e.branch7x7dbl_5.conv.weight': (192, 192, 1, 7),
    'Mixed_7a.branch7x7x3_4.conv.weight': (192, 192, 3, 3),
    'Mixed_7b.branch3x3dbl_1.conv.weight': (448, 1280, 1, 1),
    'Mixed_7c.branch3x3_2b.conv.weight': (384, 384, 3, 1),
    'Mixed_7c.branch_pool.bn.bias': (192, ),
    'fc.weight': (1008, 2048),
    'fc.bias': (1008, ),
}


@pytest.fixture(scope='module')
def inception_file(tmp_path_factory):
    """A random pytorch-fid-layout state dict (torchvision's topology,
    BatchNorm statistics randomised) saved to a file."""
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False,
                                          num_classes=1008, init_weights=False)
    state = net.state_dict()
    for name, tensor in state.items():
        if name.endswith('running_mean'):
            tensor.normal_(0, 0.1)
        elif name.endswith('running_var'):
            tensor.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp('inception') / 'inception.pth'
    torch.save(state, path)
    return path, state


def test_pytorch_fid_inception_layout(inception_file):
    _, reference = inception_file
    extractor = PytorchFIDInception(weights_path='unused.pth')
    own = {name: tuple(t.shape) for name, t in extractor.net.named_buffers()}
    for name, shape in PYTORCH_FID_LAYOUT.items():
        assert own[name] == shape, name
    assert own == {name: tuple(t.shape) for name, t in reference.items()}
    assert extractor.state_dict() == {}  # frozen: nothing persistent
    assert not list(extractor.parameters())


def test_inception_extractors_load_a_file(inception_file):
    path, state = inception_file
    images = torch.randint(0, 256, (2, 3, 40, 48), dtype=torch.uint8)
    compat = InceptionV3Compat(weights_path=str(path))
    with pytest.raises(RuntimeError, match='init_weights'):
        compat(images)
    compat.init_weights()
    assert compat.weights_sha256 == hashlib.sha256(
        path.read_bytes()).hexdigest()
    out = compat(images)
    assert out['features'].shape == (2, 2048)
    assert out['logits'].shape == (2, 1008)
    reference = FeatureExtractorInceptionV3(
        'inception-v3-compat', ['2048', 'logits_unbiased'],
        feature_extractor_weights_path=str(path))
    ref_features, ref_logits = reference(images)
    torch.testing.assert_close(out['features'], ref_features, rtol=0, atol=0)
    torch.testing.assert_close(out['logits'], ref_logits, rtol=0, atol=0)

    # converted files may lack BatchNorm's num_batches_tracked
    trimmed = {k: v for k, v in state.items()
               if not k.endswith('num_batches_tracked')}
    trimmed_path = path.parent / 'trimmed.pth'
    torch.save(trimmed, trimmed_path)
    pt = PytorchFIDInception(weights_path=str(trimmed_path))
    pt.init_weights()
    out = pt(images)
    assert out['features'].shape == (2, 2048)
    assert torch.isfinite(out['features']).all()
    torch.testing.assert_close(out['logits'],
                               out['features'] @ state['fc.weight'].T)


def test_cached_reference_keeps_features_for_kid(tmp_path):
    samples = make_samples(20, noise=20)
    kwargs = dict(metrics=('fid', 'kid'), kid_subset_size=10, kid_subsets=3,
                  reference=dict(name='toy', num_images=20))
    first_extractor, second_extractor = CountingExtractor(), \
        CountingExtractor()
    first = run(fid_metric(tmp_path, feature_extractor=first_extractor,
                           **kwargs), samples)
    second = run(fid_metric(tmp_path, feature_extractor=second_extractor,
                            **kwargs), samples)
    assert (first_extractor.images_seen, second_extractor.images_seen) == \
        (40, 20)
    assert second == first and np.isfinite(first['kid'])
    fid_only = fid_metric(tmp_path, reference=dict(
        stats_path=str(next((tmp_path / 'fid_cache').iterdir()))))
    assert run(fid_only, samples)['fid'] == pytest.approx(first['fid'])


def test_grayscale_and_uint8_inputs(tmp_path):
    samples = make_samples(16, noise=20)
    gray = [dict(pred_img=s['pred_img'][:1], gt_img=s['gt_img'][:1])
            for s in samples]
    rgb = [dict(pred_img=s['pred_img'][:1].expand(3, -1, -1).round().byte(),
                gt_img=s['gt_img'][:1].expand(3, -1, -1))
           for s in samples]
    assert run(fid_metric(tmp_path), gray)['fid'] == pytest.approx(
        run(fid_metric(tmp_path), rgb)['fid'], rel=1e-12)
    with pytest.raises(ValueError, match='C = 1 or 3'):
        fid_metric(tmp_path).process(None, [dict(
            pred_img=torch.zeros(4, 8, 8), gt_img=torch.zeros(4, 8, 8))])
