"""TokenEmbeddingPreprocessor and its batch transforms (SeiT / SeiT++
embedding-space augmentation): equivalence with independent references
(SeiT's one-hot route, torchvision, hand-written formulas), target
alignment under CutMix / Mixup and TokenAdapt, frozen parts kept out of
checkpoints, online tokenisation."""
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import affine as affine_v1
from torchvision.transforms.v2 import RandomResizedCrop
from torchvision.transforms.v2 import functional as TVF

from _helpers import REPO_ROOT
from vistok.datasets.seit_format import write_seit_codebook
from vistok.models.data_preprocessors import TokenEmbeddingPreprocessor
from vistok.models.data_preprocessors.token_augment import (
    ColorAdapt,
    EmbNoise,
    RandomFlipAffine,
    color_adapt,
    emb_noise,
    embed_codes,
    requantize,
    resized_crop,
    sample_rrc_boxes,
)
from vistok.models.data_preprocessors.token_embedding import (
    token_adapt_weights,
)
from vistok.registry import MODELS
from vistok.structures import DataSample
from vistok.utils.weights import MissingWeightsError

K, D = 40, 6  # small codebook for speed (SeiT: 391 x 32)
PLAIN = dict(noise_prob=0.0, color_adapt_prob=0.0, mixup=None)


def codebook(k=K, d=D, seed=0):
    return torch.randn(k, d, generator=torch.Generator().manual_seed(seed))


def token_batch(num, grid=32, k=K, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return pseudo_collate([
        dict(indices=torch.randint(0, k, (grid, grid), generator=gen),
             sample_idx=i, gt_label=i % 10) for i in range(num)
    ])


def one_hot_route(codes, cb, boxes, size):
    """SeiT's route (datasets.py + RRC + Codebook): one-hot (K, h, w),
    crop-and-resize bicubically (torchvision, no antialias), then
    ``@ codebook``, in float64."""
    out = []
    for sample, (top, left, h, w) in zip(codes, boxes.tolist()):
        onehot = F.one_hot(sample, len(cb)).permute(2, 0, 1).double()
        resized = TVF.resized_crop(onehot, top, left, h, w, [size, size],
                                   InterpolationMode.BICUBIC,
                                   antialias=False)
        out.append(torch.einsum('khw,kd->dhw', resized, cb.double()))
    return torch.stack(out).float()


# --- crops -----------------------------------------------------------------
def test_embedding_rrc_equals_one_hot_route():
    """Bicubic resizing is linear: crop-and-resize of the embedding map ==
    one-hot crop-and-resize then codebook (down- and up-sampling boxes),
    and the preprocessor's training crop is that route with its boxes."""
    cb = codebook()
    codes = torch.stack(token_batch(3)['indices'])
    boxes = torch.tensor([[0, 0, 32, 32], [3, 5, 10, 14], [1, 2, 30, 27]])
    ours = resized_crop(embed_codes(codes, cb.double()), boxes, 28,
                        mode='bicubic')
    assert ours.shape == (3, D, 28, 28)
    assert (ours - one_hot_route(codes, cb, boxes, 28)).abs().max() < 1e-5

    pre = TokenEmbeddingPreprocessor(codebook=cb, output='embedding',
                                     **PLAIN)
    torch.manual_seed(7)
    boxes = sample_rrc_boxes(3, (32, 32), (0.08, 1.0), (3 / 4, 4 / 3))
    torch.manual_seed(7)  # the crop boxes are the path's first draws
    out = pre(token_batch(3), training=True)
    reference = one_hot_route(codes, cb, boxes, 28)  # fp32 out: relative
    assert torch.allclose(out['inputs'], reference, rtol=1e-5, atol=1e-5)
    assert out['data_samples'].tolist() == [0, 1, 2]


def test_index_crop_is_nearest_resampling_of_codes():
    cb = codebook()
    batch = token_batch(4)
    codes = torch.stack(batch['indices'])
    pre = TokenEmbeddingPreprocessor(codebook=cb, crop_mode='index',
                                     **PLAIN)
    torch.manual_seed(3)
    boxes = sample_rrc_boxes(4, (32, 32), (0.08, 1.0), (3 / 4, 4 / 3))
    torch.manual_seed(3)
    out = pre(batch, training=True)['inputs']
    assert out.dtype == torch.int64 and out.shape == (4, 28, 28)
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        expected = TVF.resized_crop(codes[i][None].float(), top, left, h, w,
                                    [28, 28], InterpolationMode.NEAREST)
        assert torch.equal(out[i], expected[0].long())
        assert set(out[i].unique().tolist()) <= set(
            codes[i].flatten().tolist())


def test_rrc_boxes_follow_torchvision():
    """Same distribution as torchvision's RandomResizedCrop.get_params
    (mean area share and aspect), boxes inside the grid, and the centre
    fallback when no box fits."""
    torch.manual_seed(0)
    boxes = sample_rrc_boxes(4000, (32, 32), (0.08, 1.0), (3 / 4, 4 / 3))
    top, left, h, w = boxes.T.double()
    assert bool(((top >= 0) & (left >= 0) & (top + h <= 32)
                 & (left + w <= 32) & (h > 0) & (w > 0)).all())
    reference = torch.tensor([
        RandomResizedCrop.get_params(torch.empty(1, 32, 32),
                                     [0.08, 1.0], [3 / 4, 4 / 3])
        for _ in range(4000)
    ]).double()
    for ours, theirs in ((h * w, reference[:, 2] * reference[:, 3]),
                         (w / h, reference[:, 3] / reference[:, 2])):
        assert abs(ours.mean() - theirs.mean()) < 0.03 * theirs.mean()
    fallback = sample_rrc_boxes(5, (32, 24), (5.0, 6.0), (3 / 4, 4 / 3))
    assert fallback.tolist() == [[0, 0, 32, 24]] * 5  # 24/32 = 3/4: whole


@pytest.mark.parametrize('output', ['codes', 'embedding'])
def test_eval_is_centre_crop(output):
    cb = codebook()
    codes = torch.stack(token_batch(3)['indices'])
    pre = TokenEmbeddingPreprocessor(codebook=cb, output=output)
    out = pre(dict(indices=codes.to(torch.int16), gt_label=[4, 5, 6]))
    centre = codes[:, 2:30, 2:30]
    expected = centre if output == 'codes' else embed_codes(centre, cb)
    assert torch.equal(out['inputs'], expected)
    assert out['data_samples'].dtype == torch.int64
    assert out['data_samples'].tolist() == [4, 5, 6]
    assert pre(dict(indices=codes))['data_samples'] is None


def test_requantize_is_cosine_nearest():
    cb = codebook()
    x = torch.randn(2, D, 5, 7) * torch.rand(2, 1, 5, 7) * 10
    flat = F.normalize(x.permute(0, 2, 3, 1).reshape(-1, D), dim=-1)
    expected = (flat @ F.normalize(cb, dim=-1).T).argmax(-1).view(2, 5, 7)
    assert torch.equal(requantize(x, cb), expected)
    # scaling a code vector keeps its code (cosine, not Euclidean)
    codes = torch.randint(0, K, (1, 4, 4))
    assert torch.equal(requantize(embed_codes(codes, cb) * 5.0, cb), codes)


# --- colour ----------------------------------------------------------------
def test_emb_noise_statistics_mask_and_no_in_place():
    x = torch.zeros(500, 4, 8, 8)
    before = x.clone()
    mask = torch.arange(500) % 2 == 0
    torch.manual_seed(0)
    out = emb_noise(x, scale=2.0, std=0.5, mask=mask)
    assert torch.equal(x, before)  # the official Noise adds in place
    assert torch.equal(out[~mask], x[~mask])
    noise = out[mask]
    # per-element part: spatial std 0.5; per-channel offset: std 2
    assert abs(noise.std(dim=(2, 3)).mean() - 0.5) < 0.02
    assert abs(noise.mean(dim=(2, 3)).std() - 2.0) < 0.1
    torch.manual_seed(0)
    changed = (EmbNoise(prob=0.3)(torch.zeros(4000, 2, 2, 2)) != 0).flatten(
        1).any(1)
    assert abs(changed.float().mean() - 0.3) < 0.03


def test_color_adapt_equals_formula():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, 6, generator=gen) * torch.tensor(
        [1.0, 3.0, 0.2])[:, None, None] + 2.0
    x[1, 2] = 7.0  # a constant channel
    partner = torch.tensor([2, 0, 1, 4, 3])
    before = x.clone()
    out = color_adapt(x, partner, eps=1e-5)
    assert torch.equal(x, before)
    xs = x.double().numpy()
    mean = xs.mean(axis=(2, 3), keepdims=True)
    sigma = xs.std(axis=(2, 3), ddof=1, keepdims=True) + 1e-5
    expected = np.stack([
        sigma[p] * (xs[i] - mean[i]) / sigma[i] + mean[p]
        for i, p in enumerate(partner.tolist())
    ])
    assert np.allclose(out.double().numpy(), expected, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[1, 2], x[0, 2].mean().expand(4, 6), atol=1e-5)
    mask = torch.tensor([True, False, True, False, False])
    masked = color_adapt(x, partner, mask=mask)
    assert torch.equal(masked[~mask], x[~mask])
    assert torch.equal(masked[mask], out[mask])
    torch.manual_seed(0)
    adapted = ColorAdapt(prob=0.25)(x.repeat(200, 1, 1, 1))
    share = (adapted != x.repeat(200, 1, 1, 1)).flatten(1).any(1)
    assert abs(share.float().mean() - 0.25) < 0.04


def test_one_colour_transform_per_sample():
    """noise_prob / color_adapt_prob are exclusive per-sample rates: a
    ColorAdapt sample is a per-channel affine map of its input, a noised one
    is not; with 0.5 + 0.5 every sample gets exactly one."""
    cb = codebook()
    pre = TokenEmbeddingPreprocessor(
        codebook=cb, output='embedding', crop_size=4, rrc_scale=(1.0, 1.0),
        rrc_ratio=(1.0, 1.0), noise_prob=0.5, color_adapt_prob=0.5,
        mixup=None)
    batch = token_batch(600, grid=4)
    torch.manual_seed(0)
    out = pre(batch, training=True)['inputs'].flatten(2)
    emb = embed_codes(torch.stack(batch['indices']), cb).flatten(2)
    # least-squares fit out = a * emb + b per sample and channel
    centred = emb - emb.mean(-1, keepdim=True)
    slope = (centred * out).sum(-1, keepdim=True) / centred.pow(2).sum(
        -1, keepdim=True)
    residual = out - out.mean(-1, keepdim=True) - slope * centred
    affine = residual.abs().amax(dim=(1, 2)) < 1e-3
    assert abs(affine.float().mean() - 0.5) < 0.07
    assert not torch.allclose(out, emb)


# --- CutMix / Mixup and TokenAdapt -------------------------------------------
class StandInTokenAdapt(nn.Module):
    """f: nearest x`scale` upsampling times ``gain``; g: average pooling
    by ``scale``, logits = the pooled vector's scores against ``codes``."""

    def __init__(self, codes, scale=2):
        super().__init__()
        self.scale = scale
        self.gain = nn.Parameter(torch.tensor(3.0))  # the file holds 1.0
        self.register_buffer('codes', torch.as_tensor(codes).float())

    def f(self, z):
        self.seen = getattr(self, 'seen', []) + [len(z)]
        up = z.repeat_interleave(self.scale, -1)
        return self.gain * up.repeat_interleave(self.scale, -2)

    def g(self, x):
        pooled = F.avg_pool2d(x, self.scale)
        return torch.einsum('bdhw,kd->bkhw', pooled, self.codes)


@pytest.fixture
def stand_in(tmp_path):
    """Registers the stand-in TokenAdapt and writes its weights file."""
    name = 'StandInTokenAdaptForTests'
    MODELS.register_module(name=name, module=StandInTokenAdapt, force=True)
    checkpoint = str(tmp_path / 'token_adapt.pth')
    module = StandInTokenAdapt(torch.eye(12))
    with torch.no_grad():
        module.gain.fill_(1.0)
    torch.save(dict(state_dict=module.state_dict()), checkpoint)
    yield name, checkpoint
    MODELS._module_dict.pop(name, None)


def test_soft_targets_follow_their_samples(stand_in):
    """Codebook = identity, each sample a constant map of its own code =
    its label: the pixel-mean of the output embedding *is* the mixed label.
    Exact on the base path (CutMix area / Mixup λ), up to g's 2x2 pooling at
    box edges on the TokenAdapt path; a label landing on another sample
    fails."""
    name, checkpoint = stand_in
    labels = torch.tensor([3, 7, 0, 11, 5, 9, 2, 8])
    pre = TokenEmbeddingPreprocessor(
        codebook=torch.eye(12), output='embedding', num_classes=12,
        noise_prob=0.0, color_adapt_prob=0.0,
        mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.0),
        token_adapt=dict(type=name, codes=torch.eye(12).tolist()),
        token_adapt_checkpoint=checkpoint,
        token_adapt_aug=dict(flip_prob=0.5, affine_prob=0.0),
        token_adapt_mixup=dict(mixup_alpha=0.0, cutmix_alpha=1.0,
                               label_smoothing=0.0))
    batch = dict(indices=labels[:, None, None].expand(8, 32, 32),
                 gt_label=labels)
    for seed in range(3):
        torch.manual_seed(seed)
        out = pre(batch, training=True)
        targets = out['data_samples']
        assert targets.shape == (8, 12) and targets.dtype == torch.float32
        error = (out['inputs'].mean(dim=(2, 3)) - targets).abs().sum(1)
        assert (error < 0.15).all(), error
        assert (error < 1e-5).sum() >= 4  # at least the base half is exact
        assert torch.allclose(targets.sum(1), torch.ones(8))
    assert pre.token_adapt.gain.item() == 1.0  # the file's weights
    assert pre.token_adapt.seen == [4, 4, 4]  # token_adapt_ratio 0.5 of 8


def test_default_recipe_and_determinism():
    """Defaults (SeiT++ fine-tuning): codes out, soft targets with
    smoothing 0.1; the output depends on torch's RNG only (numpy's global
    state neither matters nor changes)."""
    pre = TokenEmbeddingPreprocessor(codebook=codebook(), num_classes=10)
    runs = []
    for np_seed in (1, 2):
        np.random.seed(np_seed)
        torch.manual_seed(0)
        runs.append(pre(token_batch(6), training=True))
        assert np.random.randint(1 << 30) == np.random.RandomState(
            np_seed).randint(1 << 30)
    assert torch.equal(runs[0]['inputs'], runs[1]['inputs'])
    assert torch.equal(runs[0]['data_samples'], runs[1]['data_samples'])
    assert runs[0]['inputs'].shape == (6, 28, 28)
    targets = runs[0]['data_samples']
    assert targets.shape == (6, 10)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    assert targets.min() >= 0.1 / 10 - 1e-7


def test_token_adapt_is_never_in_a_checkpoint(stand_in, tmp_path):
    name, checkpoint = stand_in

    def build(path):
        return TokenEmbeddingPreprocessor(
            codebook=torch.eye(12), num_classes=12,
            token_adapt=dict(type=name, codes=torch.eye(12).tolist()),
            token_adapt_checkpoint=path)

    class Classifier(nn.Module):

        def __init__(self, path):
            super().__init__()
            self.data_preprocessor = build(path)
            self.head = nn.Linear(4, 2)

    model = Classifier(checkpoint)
    model.data_preprocessor.load_weights()
    assert set(model.state_dict()) == {'head.weight', 'head.bias'}
    assert len(list(model.parameters())) == 2
    model.train()
    assert not model.data_preprocessor.token_adapt.training
    saved = tmp_path / 'classifier.pth'
    torch.save(model.state_dict(), saved)
    Classifier(checkpoint).load_state_dict(torch.load(saved), strict=True)

    missing = str(tmp_path / 'nowhere.pth')
    pre = build(missing)  # constructors read no files
    with pytest.raises(MissingWeightsError) as err:
        pre.load_weights()
    assert missing in str(err.value)
    assert 'model.data_preprocessor.token_adapt_checkpoint' in str(err.value)


def test_token_adapt_checkpoint_of_its_trainer(stand_in, tmp_path):
    """A checkpoint of the model that trained TokenAdapt (mmengine: the
    state dict under ``state_dict``, TokenAdapt's tensors under its child
    name, ``token_adapt.*``, beside other children's) loads as a converted
    file (bare ``gain`` / ``codes``) does."""
    name, _ = stand_in
    trained = StandInTokenAdapt(torch.eye(12) * 2)
    with torch.no_grad():
        trained.gain.fill_(0.5)
    state = {f'token_adapt.{k}': v for k, v in trained.state_dict().items()}
    state['data_preprocessor.mean'] = torch.zeros(3)  # not TokenAdapt's
    weights = token_adapt_weights(state)
    assert sorted(weights) == ['codes', 'gain']
    assert all(weights[k] is state[f'token_adapt.{k}'] for k in weights)
    bare = dict(trained.state_dict())
    assert token_adapt_weights(bare) is bare
    path = str(tmp_path / 'iter_10.pth')
    torch.save(dict(meta=dict(iter=10), state_dict=state), path)
    pre = TokenEmbeddingPreprocessor(
        codebook=torch.eye(12), num_classes=12,
        token_adapt=dict(type=name, codes=torch.eye(12).tolist()),
        token_adapt_checkpoint=path)
    pre.load_weights()
    assert pre.token_adapt.gain.item() == 0.5  # built 3.0
    assert torch.equal(pre.token_adapt.codes, torch.eye(12) * 2)


def test_token_adapt_geometry_matches_torchvision():
    """Flip, and each affine op alone (range of one value, op_prob 1)
    equals torchvision's affine as the official RandomAffine calls it."""
    x = torch.randn(2, 3, 16, 16)
    flipped = RandomFlipAffine(flip_prob=1.0, affine_prob=0.0)(x)
    assert torch.equal(flipped, x.flip(-1))
    none = dict(rotate=(0.0, 0.0), translate=(0.0, 0.0), shear_x=(0.0, 0.0),
                shear_y=(0.0, 0.0))
    for op, reference in (
        (dict(rotate=(30.0, 30.0)), dict(angle=30.0, shear=[0.0, 0.0])),
        (dict(shear_x=(15.0, 15.0)), dict(angle=0.0, shear=[15.0, 0.0])),
        (dict(shear_y=(15.0, 15.0)), dict(angle=0.0, shear=[0.0, 15.0]))):
        aug = RandomFlipAffine(flip_prob=0.0, affine_prob=1.0, op_prob=1.0,
                               **dict(none, **op))
        # the official RandomAffine(interpolation=2) passes fill=[0.] * C
        expected = affine_v1(x, translate=[0, 0], scale=1.0,
                             interpolation=InterpolationMode.BILINEAR,
                             fill=[0.0] * 3, **reference)
        assert torch.allclose(aug(x), expected, atol=1e-4)


# --- files, tokenizer, errors -----------------------------------------------
def test_codebook_file(tmp_path):
    cb = codebook()
    path = str(tmp_path / 'codebook.ckpt')
    write_seit_codebook(path, cb)
    pre = TokenEmbeddingPreprocessor(codebook_file=path, output='embedding')
    codes = torch.stack(token_batch(2)['indices'])
    out = pre(dict(indices=codes))['inputs']
    assert torch.equal(out, embed_codes(codes[:, 2:30, 2:30], cb))
    assert 'codebook' not in pre.state_dict()
    missing = str(tmp_path / 'no' / 'codebook.ckpt')
    pre = TokenEmbeddingPreprocessor(codebook_file=missing)
    with pytest.raises(MissingWeightsError) as err:
        pre(dict(indices=codes))
    assert missing in str(err.value)
    assert 'model.data_preprocessor.codebook_file' in str(err.value)
    assert 'naver-ai/seit' in str(err.value)


def test_online_tokenisation_of_images(tmp_path):
    """Image batches are tokenised as vistok.apis.tokenize does, then centre
    cropped; the tokenizer stays out of the state dict."""
    from vistok.apis.tokenize import load_tokenizer, tokenize
    config = tmp_path / 'tiny.py'
    tiny = osp.join(REPO_ROOT, 'tests/data/configs/tiny_vqvae.py')
    config.write_text(f'_base_ = [{tiny!r}]\n')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(config)).model)
    checkpoint = str(tmp_path / 'tiny.pth')
    torch.save(dict(state_dict=model.state_dict()), checkpoint)

    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8,
                            generator=gen) for _ in range(3)]
    samples = [DataSample(gt_label=torch.tensor(i)) for i in (2, 0, 1)]
    pre = TokenEmbeddingPreprocessor(
        codebook=model.quantizer.code_vectors().detach(), crop_size=12,
        tokenizer=dict(config=str(config), checkpoint=checkpoint))
    out = pre(dict(inputs=images, data_samples=samples))
    expected = tokenize(load_tokenizer(str(config), checkpoint), images)
    assert expected.shape == (3, 16, 16)
    assert torch.equal(out['inputs'], expected[:, 2:14, 2:14])
    assert out['data_samples'].tolist() == [2, 0, 1]
    assert not any(k.startswith('tokenizer') for k in pre.state_dict())
    assert not list(pre.parameters())

    pre = TokenEmbeddingPreprocessor(
        codebook=torch.randn(64, 8), crop_size=12,
        tokenizer=dict(config=str(config),
                       checkpoint=str(tmp_path / 'missing.pth')))
    with pytest.raises(MissingWeightsError,
                       match='model.data_preprocessor.tokenizer.checkpoint'):
        pre(dict(inputs=images))
    with pytest.raises(ValueError, match='tokenizer'):
        TokenEmbeddingPreprocessor(codebook=codebook())(dict(inputs=images))


def test_bad_input_and_config_errors(stand_in):
    name, checkpoint = stand_in
    cb = codebook()
    pre = TokenEmbeddingPreprocessor(codebook=cb, **PLAIN)
    with pytest.raises(ValueError, match=r'\[0, 40\)'):
        pre(dict(indices=torch.full((1, 32, 32), K)))
    with pytest.raises(ValueError, match='crop_size=28'):
        pre(dict(indices=torch.zeros(1, 16, 16, dtype=torch.long)))
    with pytest.raises(ValueError, match='integer code maps'):
        pre(dict(indices=torch.zeros(1, 32, 32)))
    with pytest.raises(ValueError, match='exactly one'):
        TokenEmbeddingPreprocessor()
    with pytest.raises(ValueError, match="crop_mode='embedding'"):
        TokenEmbeddingPreprocessor(codebook=cb, crop_mode='index')
    with pytest.raises(ValueError, match='noise_prob'):
        TokenEmbeddingPreprocessor(codebook=cb, noise_prob=0.8,
                                   color_adapt_prob=0.5)
    with pytest.raises(ValueError, match='both be None'):
        TokenEmbeddingPreprocessor(codebook=cb, mixup=None,
                                   token_adapt=dict(type=name, codes=cb))
    with pytest.raises(TypeError, match='f\\(z\\), g\\(x\\)'):
        TokenEmbeddingPreprocessor(codebook=cb, token_adapt=nn.Linear(2, 2))
    mixing = TokenEmbeddingPreprocessor(
        codebook=torch.eye(12), num_classes=12,
        token_adapt=dict(type=name, codes=torch.eye(12).tolist()),
        token_adapt_checkpoint=checkpoint)
    with pytest.raises(ValueError, match='even'):
        mixing(token_batch(5, k=12), training=True)
    with pytest.raises(ValueError, match='mixup needs gt_label'):
        mixing(dict(indices=torch.zeros(2, 32, 32, dtype=torch.long)),
               training=True)
