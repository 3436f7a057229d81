"""Discriminators: PatchGAN (taming layout), MaskGIT blur-pool, DiffAugment
and the frozen-feature ViT discriminator (StyleGAN-T / ImageFolder
``DinoDisc``)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.models.discriminators.diffaug import DiffAugment
from vistok.models.discriminators.frozen_feature import (
    FrozenFeatureDiscriminator,
)
from vistok.models.discriminators.maskgit import BlurPool, MaskGITDiscriminator
from vistok.models.discriminators.patchgan import (
    LocalBatchNorm,
    PatchGANDiscriminator,
    build_norm,
)
from vistok.registry import DISCRIMINATORS
from vistok.utils.weights import MissingWeightsError


def num_params(module):
    return sum(p.numel() for p in module.parameters())


def conv_params(cin, cout, k, bias=True, dims=2):
    return cin * cout * k**dims + (cout if bias else 0)


# --- PatchGAN ---------------------------------------------------------------
def test_patchgan_taming_default_parameter_count():
    with torch.device('meta'):
        disc = PatchGANDiscriminator()
        gray = PatchGANDiscriminator(in_channels=1)
    # taming NLayerDiscriminator(3, 64, 3): biases only on the first and last
    # conv, BatchNorm (weight + bias) after the three middle convs
    expected = (conv_params(3, 64, 4)
                + conv_params(64, 128, 4, False) + 2 * 128
                + conv_params(128, 256, 4, False) + 2 * 256
                + conv_params(256, 512, 4, False) + 2 * 512
                + conv_params(512, 1, 4))
    assert num_params(disc) == expected == 2_765_633
    # the 1-channel count reported for the same layout (VPTR issue #2)
    assert num_params(gray) == 2_763_585


def test_patchgan_layout_output_and_receptive_field():
    disc = PatchGANDiscriminator(base_channels=8, norm='none')
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64, 1]
    assert all(c.bias is not None for c in convs)
    x = torch.randn(1, 3, 128, 128, requires_grad=True)
    logits = disc(x)
    assert logits.shape == (1, 1, 14, 14)  # 128 -> 64 -> 32 -> 16 -> 15 -> 14
    logits[0, 0, 7, 7].backward()
    rows = x.grad.abs().sum(dim=(0, 1, 3)).nonzero()
    cols = x.grad.abs().sum(dim=(0, 1, 2)).nonzero()
    assert (rows.max() - rows.min() + 1 == 70
            and cols.max() - cols.min() + 1 == 70)


def test_patchgan_bias_and_norm_follow_taming():
    bn = PatchGANDiscriminator(base_channels=32, num_layers=2)
    convs = [m for m in bn.modules() if isinstance(m, nn.Conv2d)]
    assert [c.bias is not None for c in convs] == [True, False, False, True]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 2
    gn = PatchGANDiscriminator(base_channels=32, num_layers=2, norm='group',
                               num_groups=8)
    assert all(m.bias is not None for m in gn.modules()
               if isinstance(m, nn.Conv2d))
    assert sum(isinstance(m, nn.GroupNorm) for m in gn.modules()) == 2
    with pytest.raises(ValueError, match='norm must be one of'):
        PatchGANDiscriminator(norm='instance')


def test_patchgan_init_is_taming_weights_init():
    torch.manual_seed(0)
    disc = PatchGANDiscriminator()
    weights = torch.cat([m.weight.flatten() for m in disc.modules()
                         if isinstance(m, nn.Conv2d)])
    assert (abs(weights.std().item() - 0.02) < 2e-4
            and abs(weights.mean().item()) < 2e-4)
    norms = [m for m in disc.modules() if isinstance(m, nn.BatchNorm2d)]
    gamma = torch.cat([m.weight for m in norms])
    assert (abs(gamma.mean().item() - 1.0) < 5e-3
            and abs(gamma.std().item() - 0.02) < 5e-3)
    assert all(m.bias.abs().max() == 0 for m in norms)


def test_patchgan_spectral_norm_reinit_keeps_parameters():
    disc = PatchGANDiscriminator(base_channels=16, num_layers=2, norm='group',
                                 num_groups=8, spectral_norm=True)
    params = list(disc.parameters())
    disc.init_weights()
    assert all(a is b for a, b in zip(params, disc.parameters()))
    for conv in (m for m in disc.modules() if isinstance(m, nn.Conv2d)):
        sigma = torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2)
        assert abs(sigma.item() - 1.0) < 0.02
        original = conv.parametrizations.weight.original
        assert abs(original.std().item() - 0.02) < 0.005
    copy = PatchGANDiscriminator(base_channels=16, num_layers=2, norm='group',
                                 num_groups=8, spectral_norm=True)
    copy.load_state_dict(disc.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(copy.eval()(x), disc.eval()(x))


def test_local_batch_norm_normalises_each_virtual_batch():
    x = torch.randn(16, 4, 5) * 3 + 1
    out = LocalBatchNorm(4, virtual_batch_size=8, eps=1e-6)(x)
    for half in (slice(0, 8), slice(8, 16)):
        ref = F.batch_norm(x[half], None, None, training=True, eps=1e-6)
        torch.testing.assert_close(out[half], ref)
    # an uneven batch is split into near-equal groups (5 + 5 here)
    out = LocalBatchNorm(4, virtual_batch_size=8)(x[:10])
    ref = F.batch_norm(x[:5], None, None, training=True, eps=1e-6)
    torch.testing.assert_close(out[:5], ref)
    with pytest.raises(ValueError, match='num_groups=32'):
        build_norm('group', 48)


# --- MaskGIT blur-pool discriminator ----------------------------------------
def test_maskgit_parameter_count_and_layout():
    with torch.device('meta'):
        disc = MaskGITDiscriminator()
    expected = (conv_params(3, 128, 5)
                + conv_params(128, 128, 3) + 2 * 128
                + conv_params(128, 256, 3) + 2 * 256
                + conv_params(256, 512, 3) + 2 * 512
                + conv_params(512, 512, 1) + conv_params(512, 1, 5))
    assert num_params(disc) == expected == 1_909_889
    gn = [m for m in disc.modules() if isinstance(m, nn.GroupNorm)]
    assert [m.num_groups for m in gn] == [32, 32, 32]
    slopes = [m.negative_slope for m in disc.modules()
              if isinstance(m, nn.LeakyReLU)]
    assert slopes == [0.1] * 5


def test_maskgit_output_shape_and_no_blur_buffer_in_state_dict():
    disc = DISCRIMINATORS.build(
        dict(type='MaskGITDiscriminator', base_channels=32))
    assert disc(torch.randn(2, 3, 64, 64)).shape == (2, 1, 16, 16)
    assert not any('kernel' in k for k in disc.state_dict())
    assert sum(1 for _ in disc.buffers()) == 3  # one blur filter per stage


@pytest.mark.parametrize('size', [16, 15])
def test_blur_pool_formula_and_constant_image(size):
    x = torch.randn(1, 2, size, size)
    out = BlurPool((1, 3, 3, 1))(x)
    out_size = (size + 1) // 2
    assert out.shape == (1, 2, out_size, out_size)
    taps = torch.tensor([1., 3., 3., 1.])
    filt = torch.outer(taps, taps) / 64
    total = (out_size - 1) * 2 + 4 - size
    padded = F.pad(x, [total // 2, total - total // 2] * 2)
    for i in range(out_size):
        for j in range(out_size):
            window = padded[0, :, 2 * i:2 * i + 4, 2 * j:2 * j + 4]
            torch.testing.assert_close(out[0, :, i, j],
                                       (window * filt).sum((1, 2)))
    const = torch.full((1, 3, size, size), 0.7)
    torch.testing.assert_close(BlurPool(pad_mode='replicate')(const),
                               torch.full((1, 3, out_size, out_size), 0.7))
    # zero padding only darkens the border
    interior = BlurPool()(const)[..., 1:-1, 1:-1]
    torch.testing.assert_close(interior, torch.full_like(interior, 0.7))
    volume = torch.full((1, 1, size, size, size), -0.3)
    vol_out = BlurPool(spatial_dims=3, pad_mode='replicate')(volume)
    torch.testing.assert_close(vol_out,
                               torch.full((1, 1) + (out_size, ) * 3, -0.3))


def test_blur_pool_box_kernel_is_average_pooling():
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(BlurPool((1, 1))(x), F.avg_pool2d(x, 2))


def test_blur_pool_is_more_shift_invariant_than_strided_subsampling():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 32, 32)
    shifted = torch.roll(x, 1, dims=-1)
    blur = BlurPool(pad_mode='circular')

    def change(f):
        return ((f(x) - f(shifted)).norm() / f(x).norm()).item()

    blurred, strided = change(blur), change(lambda t: t[..., ::2, ::2])
    # white noise: sqrt(2) for subsampling, ~0.71 for the (1, 3, 3, 1) filter
    assert blurred < 0.6 * strided


# --- DiffAugment ------------------------------------------------------------
def test_diffaugment_is_differentiable():
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    out = DiffAugment()(x, torch.Generator().manual_seed(0))
    (out * torch.randn_like(out)).sum().backward()
    assert (x.grad is not None and torch.isfinite(x.grad).all()
            and x.grad.abs().sum() > 0)


def test_diffaugment_degenerate_settings_are_identity():
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(DiffAugment('translation', translation_ratio=0)(x), x)
    assert torch.equal(DiffAugment('cutout', cutout_ratio=0)(x), x)
    assert torch.equal(DiffAugment(prob=0.0)(x), x)
    assert torch.equal(DiffAugment('')(x), x)
    color = DiffAugment('color', brightness_range=(0, 0),
                        saturation_range=(1, 1), contrast_range=(1, 1))
    torch.testing.assert_close(color(x), x)


def test_diffaugment_brightness_is_a_per_sample_offset():
    x = torch.randn(64, 3, 8, 8)
    out = DiffAugment('color', saturation_range=(1, 1),
                      contrast_range=(1, 1))(x)
    offset = (out - x).flatten(1)
    torch.testing.assert_close(offset, offset[:, :1].expand_as(offset))
    assert offset.abs().max() <= 0.5 and offset[:, 0].std() > 0.1


def test_diffaugment_translation_is_a_zero_filled_shift():
    x = torch.randn(32, 2, 16, 16)
    aug = DiffAugment('translation', translation_ratio=0.125)
    out = aug(x, torch.Generator().manual_seed(1))

    # output[i, j] = img[i + dh, j + dw], zero outside
    def shifted(img, dh, dw):
        padded = F.pad(img, [2, 2, 2, 2])
        return padded[:, 2 + dh:18 + dh, 2 + dw:18 + dw]

    seen = set()
    for img, aug in zip(x, out):
        matches = [(dh, dw) for dh in range(-2, 3) for dw in range(-2, 3)
                   if torch.equal(shifted(img, dh, dw), aug)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 5


def test_diffaugment_cutout_zeroes_the_expected_fraction():
    H = W = 16
    size = 8  # cutout_ratio 0.5
    ones = torch.ones(4096, 1, H, W)
    out = DiffAugment('cutout', cutout_ratio=0.5)(
        ones, torch.Generator().manual_seed(2))
    zero = out[:, 0] == 0
    rows, cols = zero.any(2).sum(1), zero.any(1).sum(1)
    # one axis-aligned rectangle
    assert torch.equal(rows * cols, zero.sum((1, 2)))
    assert (rows.max() == size and cols.max() == size
            and rows.min() >= size // 2)
    # centre uniform in [0, H + 1 - size % 2), rectangle clipped by the border
    starts = [o - size // 2 for o in range(H + 1 - size % 2)]
    mean_rows = sum(min(s + size, H) - max(s, 0) for s in starts) / len(starts)
    expected = mean_rows**2 / (H * W)
    assert abs(zero.float().mean().item() - expected) < 0.005


def test_diffaugment_generator_reproducible_and_checks_arguments():
    x = torch.randn(4, 3, 16, 16)
    aug = DiffAugment(prob=0.5)
    a = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(DiffAugment()(x, torch.Generator().manual_seed(4)),
                           DiffAugment()(x, torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="policy 'color,blur'"):
        DiffAugment('color,blur')
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        aug(torch.randn(3, 16, 16))


# --- frozen-feature ViT discriminator ---------------------------------------
TINY = dict(model_name='vit_tiny_patch16_224', input_size=32,
            feature_blocks=(0, 2), model_kwargs=dict(depth=4),
            head_num_groups=8)


@pytest.fixture(scope='module')
def tiny_vit(tmp_path_factory):
    """A random tiny ViT (4 blocks, 32 px, 2x2 patches) saved as the trunk
    file."""
    import timm
    torch.manual_seed(0)
    vit = timm.create_model('vit_tiny_patch16_224', pretrained=False,
                            img_size=32, num_classes=0, depth=4).eval()
    path = tmp_path_factory.mktemp('frozen_vit') / 'vit_tiny.pth'
    torch.save(vit.state_dict(), path)
    return vit, str(path)


def tiny_disc(path, **kwargs):
    disc = FrozenFeatureDiscriminator(weights_path=path, **{**TINY, **kwargs})
    disc.init_weights()
    return disc


def test_frozen_feature_only_heads_are_parameters(tiny_vit):
    vit, path = tiny_vit
    disc = tiny_disc(path)
    assert len(disc.trunk.blocks) == 3  # pruned after the last tapped block
    assert all(name.startswith('heads.')
               for name, _ in disc.named_parameters())
    assert all(key.startswith('heads.') for key in disc.state_dict())
    C = 192
    head = (conv_params(C, C, 1, dims=1) + 2 * C
            + conv_params(C, C, 9, dims=1) + 2 * C
            + conv_params(C, 1, 1, dims=1))
    assert num_params(disc) == 3 * head  # embedding + blocks 0 and 2
    for name, tensor in disc.trunk.named_buffers():
        torch.testing.assert_close(tensor, vit.state_dict()[name], rtol=0,
                                   atol=0)


def test_frozen_feature_missing_weights_names_file_and_key(tmp_path):
    missing = str(tmp_path / 'dino_vits16.pth')
    disc = FrozenFeatureDiscriminator(weights_path=missing, **TINY)
    with pytest.raises(MissingWeightsError) as err:
        disc.init_weights()
    assert missing in str(err.value) and '`weights_path`' in str(err.value)
    assert ("timm.create_model('vit_tiny_patch16_224', pretrained=True)"
            in str(err.value))
    with pytest.raises(MissingWeightsError, match='is not set'):
        FrozenFeatureDiscriminator(**TINY).init_weights()
    with pytest.raises(ValueError, match='feature_blocks'):
        FrozenFeatureDiscriminator(**{**TINY, 'feature_blocks': (1, 4)})


def test_frozen_feature_features_match_timm_intermediates(tiny_vit):
    vit, path = tiny_vit
    disc = tiny_disc(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = disc.extract_features(x)
        ref = vit.forward_intermediates(x, indices=[0, 2],
                                        return_prefix_tokens=True,
                                        output_fmt='NLC',
                                        intermediates_only=True)
        embed = torch.cat([vit.cls_token.expand(2, -1, -1),
                           vit.patch_embed(x)], 1)
        embed = embed + vit.pos_embed
    assert [f.shape for f in feats] == [(2, 192, 4)] * 3
    torch.testing.assert_close(
        feats[0], (embed[:, 1:] + embed[:, :1]).transpose(1, 2))
    for feat, (patches, prefix) in zip(feats[1:], ref):
        torch.testing.assert_close(
            feat, (patches + prefix[:, :1]).transpose(1, 2))
    # explicit softmax attention (for R1) computes the same
    with torch.no_grad():
        unfused = tiny_disc(path, fused_attention=False).extract_features(x)
    for feat, other in zip(feats, unfused):
        torch.testing.assert_close(feat, other)


def test_frozen_feature_preprocess_normalises_crops_and_resizes(tiny_vit):
    _, path = tiny_vit
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def normalise(t):
        return ((t + 1) / 2 - mean) / std

    plain = tiny_disc(path, policy='', random_crop_prob=0.0)
    torch.testing.assert_close(plain.preprocess(x), normalise(x))
    big = torch.rand(2, 3, 48, 48) * 2 - 1
    torch.testing.assert_close(
        plain.preprocess(big),
        normalise(F.interpolate(big, size=(32, 32), mode='area')))
    crop = tiny_disc(path, policy='', random_crop_prob=1.0).preprocess(big)
    matches = [(i, j) for i in range(17) for j in range(17) if torch.allclose(
        crop, normalise(big[..., i:i + 32, j:j + 32]), atol=1e-5)]
    assert len(matches) == 1


def test_frozen_feature_disc_step_trains_heads_only_and_grad_reaches_images(
        tiny_vit):
    vit, path = tiny_vit
    torch.manual_seed(0)
    disc = DISCRIMINATORS.build(
        dict(type='FrozenFeatureDiscriminator', weights_path=path, **TINY))
    disc.init_weights()
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    fake = torch.rand(4, 3, 32, 32) * 2 - 1
    logits_real, logits_fake = disc(real), disc(fake)
    assert logits_real.shape == (4, 3 * 4)
    heads_before = [p.detach().clone() for p in disc.parameters()]
    optim = torch.optim.SGD(disc.parameters(), lr=0.1)
    (F.relu(1 - logits_real).mean()
     + F.relu(1 + logits_fake).mean()).backward()
    optim.step()
    assert all(not torch.equal(a, b)
               for a, b in zip(heads_before, disc.parameters()))
    for name, tensor in disc.trunk.named_buffers():
        assert torch.equal(tensor, vit.state_dict()[name]), name
    fake.requires_grad_(True)
    (-disc(fake).mean()).backward()
    assert torch.isfinite(fake.grad).all() and fake.grad.abs().sum() > 0


@pytest.mark.parametrize('cfg', [
    dict(type='PatchGANDiscriminator', base_channels=16, num_layers=2,
         norm='group', num_groups=8, spectral_norm=True),
    dict(type='MaskGITDiscriminator', base_channels=32, channel_mults=(1, 2),
         pool_size=4),
    'frozen',
])
def test_discriminators_support_r1_double_backward(cfg, tiny_vit):
    if cfg == 'frozen':  # fused SDPA kernels have no double backward
        cfg = dict(type='FrozenFeatureDiscriminator', weights_path=tiny_vit[1],
                   fused_attention=False, **TINY)
    disc = DISCRIMINATORS.build(cfg)
    disc.init_weights()
    real = torch.randn(2, 3, 32, 32, requires_grad=True)
    logits = disc(real)
    assert logits.shape[0] == 2
    (grad, ) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    grad.pow(2).sum().backward()  # R1 penalty (Mescheder et al. 2018)
    # a logit bias has no R1 grad
    weights = [p for p in disc.parameters() if p.dim() > 1]
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in weights)
