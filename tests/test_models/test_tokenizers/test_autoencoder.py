import copy

import numpy as np
import pytest
import torch
from mmengine.optim import OptimWrapper

from vistok.models.tokenizers import AutoencoderTokenizer
from vistok.registry import MODELS
from vistok.structures import DataSample, TokenizerOutput

RESOLUTION = 16
CODEBOOK_SIZE = 64
BACKBONE = dict(
    ch=16,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(),
    resolution=RESOLUTION,
    z_channels=16,
    num_groups=8)
CFG = dict(
    type='AutoencoderTokenizer',
    encoder=dict(type='ConvEncoder', in_channels=3, **BACKBONE),
    decoder=dict(type='ConvDecoder', out_ch=3, **BACKBONE),
    quantizer=dict(
        type='VectorQuantizer', codebook_size=CODEBOOK_SIZE, embed_dim=8),
    reconstruction_loss=dict(type='MSELoss'))


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: on a shared 2-core machine, two OpenMP threads
    competing with other processes make these small steps up to ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(**overrides):
    torch.manual_seed(0)
    cfg = copy.deepcopy(CFG)
    cfg.update(overrides)
    return MODELS.build(cfg)


def procedural_images(num=4, size=RESOLUTION):
    """CHW uint8 RGB images: sinusoids and ramps of growing frequency."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for k in range(1, num + 1):
        rgb = np.stack([
            np.sin(2 * np.pi * k * xx),
            np.cos(2 * np.pi * k * yy),
            2 * ((k * (xx + yy)) % 1) - 1,
        ])
        images.append(
            torch.from_numpy(((rgb + 1) * 127.5).round().astype(np.uint8)))
    return images


def batch(num=4):
    images = procedural_images(num)
    samples = [DataSample(metainfo=dict(sample_idx=i)) for i in range(num)]
    return dict(inputs=images, data_samples=samples)


def test_build_and_default_preprocessor():
    model = build()
    assert isinstance(model, AutoencoderTokenizer)
    assert model.codebook_size == CODEBOOK_SIZE
    data = model.data_preprocessor(batch(), False)
    assert data['inputs'].shape == (4, 3, RESOLUTION, RESOLUTION)
    assert data['inputs'].min() >= -1 and data['inputs'].max() <= 1
    assert data['inputs'].min() == -1 and data['inputs'].max() == 1


def test_loss_keys():
    model = build(reconstruction_loss=[
        dict(type='MSELoss'), dict(type='L1Loss', loss_weight=0.1)
    ])
    data = model.data_preprocessor(batch(), True)
    losses = model(**data, mode='loss')
    assert set(losses) == {
        'loss_mse', 'loss_l1', 'loss_commitment', 'loss_codebook',
        'perplexity', 'usage', 'entropy'
    }
    assert not losses['perplexity'].requires_grad
    loss, log_vars = model.parse_losses(losses)
    expected = sum(v for k, v in losses.items() if 'loss' in k)
    torch.testing.assert_close(loss, expected)
    assert 'perplexity' in log_vars


def test_duplicate_loss_names_rejected():
    with pytest.raises(ValueError, match='distinct'):
        build(reconstruction_loss=[dict(type='L1Loss'), dict(type='L1Loss')])


def test_channel_mismatch_without_quant_conv():
    with pytest.raises(ValueError, match='quant'):
        build(use_quant_conv=False)
    model = build(
        use_quant_conv=False,
        use_post_quant_conv=False,
        quantizer=dict(
            type='VectorQuantizer',
            codebook_size=CODEBOOK_SIZE,
            embed_dim=8,
            in_channels=16))
    assert isinstance(model.quant_conv, torch.nn.Identity)


def test_tensor_mode_and_encode_decode():
    model = build().eval()
    images = model.data_preprocessor(batch(), False)['inputs']
    out = model(images, mode='tensor')
    assert isinstance(out, TokenizerOutput)
    assert out.reconstruction.shape == images.shape
    assert out.latent.shape == (4, 8, 8, 8)
    tokens = model.encode(images)
    assert tokens.shape == (4, 8, 8)
    assert tokens.dtype == torch.long
    assert torch.equal(tokens, out.quantizer.indices)
    decoded = model.decode(tokens)
    assert decoded.shape == images.shape
    assert torch.equal(decoded, out.reconstruction)


def test_predict():
    model = build()
    data = batch()
    raw = torch.stack(data['inputs']).float()
    samples = model.val_step(data)
    assert len(samples) == 4
    for i, sample in enumerate(samples):
        assert sample.sample_idx == i  # incoming metainfo kept
        assert sample.codebook_size == CODEBOOK_SIZE
        assert sample.pred_img.shape == (3, RESOLUTION, RESOLUTION)
        assert sample.pred_img.dtype == torch.float32
        assert sample.pred_img.min() >= 0 and sample.pred_img.max() <= 255
        torch.testing.assert_close(sample.gt_img, raw[i])
        assert sample.tokens.shape == (64, )
        assert not sample.pred_img.requires_grad


def test_predict_without_data_samples():
    model = build()
    images = model.data_preprocessor(batch(2), False)['inputs']
    samples = model(images, mode='predict')
    assert [s.codebook_size for s in samples] == [CODEBOOK_SIZE] * 2


def test_init_cfg():
    model = build(
        init_cfg=dict(type='Constant', layer='Conv2d', val=0.0, bias=0.0))
    model.init_weights()
    assert model.encoder.conv_in.weight.abs().sum() == 0
    assert model.decoder.conv_out.weight.abs().sum() == 0


def test_training_lowers_reconstruction_loss():
    model = build()
    optim_wrapper = OptimWrapper(torch.optim.Adam(model.parameters(), lr=2e-3))
    data = batch()
    history = []
    for _ in range(150):
        log_vars = model.train_step(data, optim_wrapper)
        history.append(log_vars['loss_mse'].item())
    initial, final = np.mean(history[:5]), np.mean(history[-5:])
    assert final < 0.7 * initial


@pytest.mark.parametrize('quantizer, length, vocabulary', [
    (dict(type='MultiScaleResidualQuantizer', scales=[1, 2, 4, 8],
          quantizer=dict(type='VectorQuantizer', codebook_size=16,
                         embed_dim=8, use_l2_norm=True)), 85, 16),
    (dict(type='HierarchicalQuantizer', token_order='interleaved',
          top_quantizer=dict(type='VectorQuantizer', codebook_size=16,
                             embed_dim=32),
          bottom_quantizer=dict(type='VectorQuantizer', codebook_size=16,
                                embed_dim=8)), 80, 32),
    (dict(type='ProductQuantizer', num_branches=2,
          quantizer=dict(type='VectorQuantizer', codebook_size=16,
                         embed_dim=4)), 128, 32),
])
def test_predict_tokens_of_structured_quantizers(quantizer, length,
                                                 vocabulary):
    """Multi-scale lists, hierarchical tuples and product branches become one
    token sequence per image in the quantizer's joint vocabulary."""
    samples = build(quantizer=quantizer).val_step(batch(2))
    for sample in samples:
        assert sample.tokens.shape == (length, )
        assert sample.codebook_size == vocabulary
        assert 0 <= sample.tokens.min() and sample.tokens.max() < vocabulary


def test_frozen_parts_are_not_trained():
    """Decoder fine-tuning (TiTok stage 2): frozen parts keep their weights,
    stay in eval mode, are outside the optimizer's parts and the EMA copy,
    and a quantizer fed only by frozen parts adds no loss."""
    model = build(frozen_parts=('encoder', 'quant_conv', 'quantizer'),
                  ema=dict(decay=0.5))
    assert set(model.optim_parts()['generator']) == {'post_quant_conv',
                                                     'decoder'}
    assert set(model.ema) == {'post_quant_conv', 'decoder'}
    frozen = {k: v.clone() for k, v in model.state_dict().items()
              if k.startswith(('encoder.', 'quant_conv.', 'quantizer.'))}
    decoder = copy.deepcopy(model.decoder.state_dict())
    wrapper = OptimWrapper(torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2))
    model.train()
    assert not model.encoder.training and not model.quantizer.training
    assert model.decoder.training
    for _ in range(3):
        log = model.train_step(batch(), wrapper)
    assert 'loss_commitment' not in log and 'loss_mse' in log
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert any(not torch.equal(state[f'decoder.{k}'], v)
               for k, v in decoder.items())
    # a trainable part in front of a frozen quantizer keeps its terms
    model = build(frozen_parts=('quantizer', ))
    model.train()
    assert 'loss_commitment' in model.loss(
        model.data_preprocessor(batch(), True)['inputs'])
    with pytest.raises(ValueError, match="frozen_parts \\['head'\\]"):
        build(frozen_parts=('head', ))
