"""The plugin template: a quantizer and a tokenizer registered through
custom_imports."""
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import DefaultScope

from _helpers import REPO_ROOT

CONFIG = osp.join(REPO_ROOT, 'projects/example_project/configs/'
                  'vqvae_rpq-512_conv-f4_1xb8-2k_shapes-64.py')


def test_custom_imports_registers_the_plugin_quantizer():
    from vistok.registry import MODELS, QUANTIZERS
    cfg = Config.fromfile(CONFIG)  # imports projects.example_project...
    assert 'RandomProjectionQuantizer' in QUANTIZERS
    with DefaultScope.overwrite_default_scope('vistok'):
        model = MODELS.build(cfg.model)
    assert type(model.quantizer).__name__ == 'RandomProjectionQuantizer'


def test_random_projection_quantizer_contract():
    from projects.example_project.example_project import (
        RandomProjectionQuantizer,
    )
    rpq = RandomProjectionQuantizer(in_channels=6, codebook_size=32,
                                    code_dim=4, seed=3)
    z = torch.randn(2, 6, 5, 7, requires_grad=True)
    out = rpq(z)
    assert out.indices.shape == (2, 5, 7)
    assert torch.equal(out.quantized, rpq.decode(out.indices))
    flat = z.detach().movedim(1, -1).reshape(-1, 6)
    projected = F.normalize(flat @ rpq.projection.T, dim=-1)
    brute = torch.cdist(projected, rpq.codebook).argmin(dim=-1)
    assert torch.equal(out.indices.reshape(-1), brute)
    out.quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # straight-through
    assert not any(p.requires_grad for p in rpq.parameters())


PATCH_CONFIG = osp.join(REPO_ROOT, 'projects/example_project/configs/'
                        'patch-tokenizer_fsq-1k_p4_1xb8-2k_shapes-64.py')


def test_plugin_tokenizer_round_trip_and_training():
    """The plugin's PatchTokenizer, built from its config through
    custom_imports, meets the tokenizer contract and trains with the base
    class's recipe (its L1 loss falls on a fixed batch)."""
    from mmengine.optim import OptimWrapper

    from vistok.registry import MODELS
    cfg = Config.fromfile(PATCH_CONFIG)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('vistok'):
        model = MODELS.build(cfg.model)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    tokens = model.encode(images)
    assert tokens.shape == (2, 4, 4) and int(tokens.max()) < 1000
    out = model.reconstruct(images)
    assert torch.equal(model.decode(tokens), out.reconstruction)
    with pytest.raises(ValueError, match='model.patch_size=4'):
        model.encode(images[..., :15])
    # one colour per 4 x 4 patch: what one token per patch can represent
    patches = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    data = dict(inputs=list(patches.repeat_interleave(4, -1)
                            .repeat_interleave(4, -2)))
    wrapper = OptimWrapper(torch.optim.Adam(model.parameters(), lr=1e-2))
    losses = [float(model.train_step(data, wrapper)['loss_l1'].detach())
              for _ in range(60)]
    assert losses[-1] < 0.3 * losses[0]
    pred = model.predict(model.data_preprocessor(data)['inputs'])
    assert pred[0].pred_img.shape == (3, 16, 16)
    assert pred[0].codebook_size == 1000
