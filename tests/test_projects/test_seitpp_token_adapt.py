"""SeiT++ TokenAdapt: the relative geometric augmentation, and f / g learnt
from a tokenizer's token pairs beating the index-space transform."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from _helpers import REPO_ROOT
from projects.SeiTpp.seitpp.token_adapt import TokenAdaptTrainer
from vistok.models.data_preprocessors.geometric import (
    AffineCropParams,
    apply_affine_crop,
    sample_affine_crop,
)
from vistok.registry import DATASETS, MODELS

TINY = osp.join(REPO_ROOT, 'tests/data/configs/tiny_vqvae.py')


def _fixed_rotation_crop(batch):
    """A: rotate by 90° counter-clockwise, keep the centre 7/8."""
    params = AffineCropParams.identity(batch)
    params.angle[:] = 90
    params.box[:] = torch.tensor([1 / 16, 1 / 16, 7 / 8, 7 / 8])
    return params


def test_relative_augmentation_matches_exact_index_operations():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float).reshape(2, 3, 8, 8)
    params = AffineCropParams.identity(2)
    torch.testing.assert_close(apply_affine_crop(x, params, (8, 8)), x)
    params.angle[:] = 90
    assert torch.equal(apply_affine_crop(x, params, (8, 8), 'nearest'),
                       torch.rot90(x, 1, (2, 3)))
    params = AffineCropParams.identity(2)
    params.flip[0] = True
    params.box[:] = torch.tensor([0.25, 0.5, 0.5, 0.5])
    out = apply_affine_crop(x, params, (4, 4), 'nearest')
    assert torch.equal(out[0], x[0].flip(-1)[:, 2:6, 4:8])
    assert torch.equal(out[1], x[1, :, 2:6, 4:8])
    params = AffineCropParams.identity(2)
    params.translate[:] = torch.tensor([0.25, 0.0])
    out = apply_affine_crop(x, params, (8, 8), 'nearest', fill=-1)
    assert torch.equal(out[..., 2:], x[..., :6])
    assert (out[..., :2] == -1).all()
    # the same relative draw at two resolutions: the low-resolution result
    # is the average-pooled high-resolution one (bilinear, linear content)
    ramp = torch.linspace(0, 1, 64)
    image = (ramp[None, :] + 2 * ramp[:, None])[None, None].repeat(4, 1, 1,
                                                                   1)
    draw = sample_affine_crop(4, flip_prob=0.5, affine_prob=1.0, op_prob=1.0,
                              generator=torch.Generator().manual_seed(0))
    high = apply_affine_crop(image, draw, (56, 56))
    low = apply_affine_crop(torch.nn.functional.avg_pool2d(image, 4), draw,
                            (14, 14))
    inside = torch.nn.functional.avg_pool2d(
        apply_affine_crop(torch.ones_like(image), draw, (56, 56)), 4) == 1
    diff = (torch.nn.functional.avg_pool2d(high, 4) - low).abs()[inside]
    assert inside.float().mean() > 0.3 and diff.max() < 1e-3


@pytest.mark.parametrize('seed', [0])
def test_token_adapt_beats_the_index_space_transform(seed):
    """f / g learnt from (T_x, T_A(x)) pairs of a tokenizer predict the
    tokens of a rotated, cropped image better than rotating and cropping
    the code grid itself."""
    torch.manual_seed(seed)
    tokenizer = MODELS.build(Config.fromfile(TINY).model)  # 16x16, 64 codes
    dataset = DATASETS.build(dict(type='ProceduralShapesDataset',
                                  num_samples=160, image_size=32,
                                  pipeline=[dict(type='PackInputs')]))
    images = torch.stack([dataset[i]['inputs'] for i in range(160)]).float()
    train, held_out = images[:128], images[128:]
    trainer = TokenAdaptTrainer(
        token_adapt=dict(type='TokenAdapt', num_codes=64, code_dim=8,
                         embed_dim=64, num_heads=4, grid=16, out_grid=14),
        tokenizer=tokenizer, crop_fraction=28 / 32)
    assert not any('tokenizer' in k for k in trainer.state_dict())

    tokens, target, params = trainer.make_pairs(
        held_out, _fixed_rotation_crop(len(held_out)))
    assert target.shape == (32, 14, 14)
    index_space = apply_affine_crop(tokens[:, None].float(), params,
                                    (14, 14), 'nearest')[:, 0].long()
    index_accuracy = (index_space == target).float().mean().item()

    optimizer = torch.optim.AdamW(trainer.token_adapt.parameters(), lr=2e-3)
    for _ in range(100):
        batch = train[torch.randint(0, len(train), (16, ))]
        draw = sample_affine_crop(16, flip_prob=0, affine_prob=0,
                                  scale=(0.6, 1.0))
        draw.angle[:] = 90
        x_tokens, ax_tokens, draw = trainer.make_pairs(batch, draw)
        logits = trainer.adapt_logits(x_tokens, draw, ax_tokens.shape[-2:])
        loss = torch.nn.functional.cross_entropy(logits, ax_tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = trainer.adapt_logits(tokens, params, (14, 14)).argmax(1)
    adapt_accuracy = (predicted == target).float().mean().item()
    print(f'TokenAdapt {adapt_accuracy:.3f} vs index-space rot90 + nearest '
          f'crop {index_accuracy:.3f}')
    assert adapt_accuracy > index_accuracy + 0.05
