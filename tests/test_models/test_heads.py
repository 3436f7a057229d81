import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from vistok.models.heads.pixel import PixelHead, patchify, unpatchify
from vistok.models.heads.token_logit import TokenLogitHead
from vistok.registry import HEADS


def test_patchify_layout_and_round_trip():
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, 4)
    expected = rearrange(images,
                         'b c (h p1) (w p2) -> b (p1 p2 c) h w',
                         p1=4,
                         p2=4)
    assert torch.equal(patches, expected)
    assert torch.equal(unpatchify(patches, 4), images)
    with pytest.raises(ValueError, match=r'\(2, 3, 8, 12\).*patch_size=5'):
        patchify(images, 5)
    with pytest.raises(ValueError, match='patch_size\\*\\*2=16'):
        unpatchify(torch.randn(1, 20, 2, 2), 4)


@pytest.mark.parametrize('refine', [None, 3])
def test_pixel_head_equals_titok_reference(refine):
    """1x1 conv to p·p·3 values, rearrange 'b (p1 p2 c) h w -> b c (h p1)
    (w p2)', optional 3x3 conv (TiTok's single-stage decoder output)."""
    torch.manual_seed(0)
    head = HEADS.build(
        dict(type='PixelHead',
             in_channels=8,
             patch_size=4,
             refine_kernel_size=refine))
    x = torch.randn(2, 8, 3, 5)
    expected = rearrange(F.conv2d(x, head.proj.weight, head.proj.bias),
                         'b (p1 p2 c) h w -> b c (h p1) (w p2)',
                         p1=4,
                         p2=4)
    if refine is not None:
        expected = F.conv2d(expected,
                            head.refine.weight,
                            head.refine.bias,
                            padding=1)
    out = head(x)
    assert out.shape == (2, 3, 12, 20)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    last = head.proj if refine is None else head.refine
    assert head.last_layer is last.weight


def test_pixel_head_errors():
    with pytest.raises(ValueError, match='odd'):
        PixelHead(8, 4, refine_kernel_size=2)
    with pytest.raises(ValueError, match=r'\(B, 8, h, w\).*\(2, 7, 3, 3\)'):
        PixelHead(8, 4)(torch.randn(2, 7, 3, 3))


def test_token_logit_head_equals_titok_legacy_ffn():
    """TiTok's stage-1 head: conv1x1(w→2w) → tanh → conv1x1(2w→1024)."""
    torch.manual_seed(0)
    head = HEADS.build(
        dict(type='TokenLogitHead',
             in_channels=16,
             num_classes=40,
             hidden_channels=32))
    x = torch.randn(2, 16, 4, 4)
    first, last = head.mlp[0], head.mlp[2]
    expected = F.conv2d(
        torch.tanh(F.conv2d(x, first.weight[..., None, None], first.bias)),
        last.weight[..., None, None], last.bias)
    out = head(x)
    assert out.shape == (2, 40, 4, 4)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    width = 1024
    with torch.device('meta'):
        titok_l = TokenLogitHead(width, 1024, 2 * width)
    assert sum(
        p.numel()
        for p in titok_l.parameters()) == (width * 2 * width + 2 * width +
                                           2 * width * 1024 + 1024)


def test_token_logit_head_norm_and_sequences():
    """LayerNorm over channels, then one linear layer; any spatial rank."""
    torch.manual_seed(0)
    head = TokenLogitHead(8, 10, norm=True, norm_eps=1e-6)
    for p in head.norm.parameters():
        torch.nn.init.normal_(p)
    x = torch.randn(3, 8, 5)  # a (B, C, N) sequence
    normed = F.layer_norm(x.transpose(1, 2), (8, ), head.norm.weight,
                          head.norm.bias, 1e-6)
    expected = F.linear(normed, head.mlp.weight, head.mlp.bias).transpose(1, 2)
    out = head(x)
    assert out.shape == (3, 10, 5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_token_logit_head_errors():
    with pytest.raises(ValueError, match='activation'):
        TokenLogitHead(8, 10, hidden_channels=4, activation='swish')
    with pytest.raises(ValueError, match=r'\(B, 8, \*spatial\).*\(2, 4, 3\)'):
        TokenLogitHead(8, 10)(torch.randn(2, 4, 3))
