"""The plugin template: a quantizer registered through custom_imports."""
import os.path as osp

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
    from projects.example_project.example_project import \
        RandomProjectionQuantizer
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
