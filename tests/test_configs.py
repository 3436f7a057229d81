"""Every config under configs/ and projects/*/configs/ loads and builds its
model (DESIGN §4)."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from _helpers import REPO_ROOT

CONFIGS = sorted(
    p for pattern in ('configs/**/*.py', 'projects/*/configs/**/*.py')
    for p in glob.glob(osp.join(REPO_ROOT, pattern), recursive=True)
    if '_base_' not in p.split(osp.sep))


def test_configs_are_found():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize('path', CONFIGS,
                         ids=[osp.relpath(p, REPO_ROOT) for p in CONFIGS])
def test_config_builds_its_model(path):
    import vistok.models  # noqa: F401
    from vistok.registry import MODELS
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'vistok'
    name = osp.splitext(osp.basename(path))[0]
    assert len(name.split('_')) >= 5, (
        f'{name} does not follow {{algorithm}}_{{quantizer}}-{{codebook}}_'
        '{backbone}_{gpus}xb{batch}-{schedule}_{data}-{res}')
    with DefaultScope.overwrite_default_scope('vistok'):
        model = MODELS.build(cfg.model)
    assert sum(p.numel() for p in model.parameters()) > 0
    batch = cfg.train_dataloader.batch_size
    assert f'xb{batch}-' in name, f'{name}: batch size is {batch}'
    with torch.no_grad():
        images = torch.rand(1, 3, 64, 64) * 2 - 1
        assert model(images, mode='tensor').reconstruction.shape == \
            images.shape


#: generator (tokenizer) parameter counts of paper configs
PARAMETER_COUNTS = {
    # taming-transformers' vqgan_imagenet_f16_16384
    'configs/vqgan/vqgan_vq-16k_conv-f16_8xb12-400k_in1k-256.py': 76_073_859,
    # the same with 8-d codes (LlamaGen reports ~72M for its variant)
    'configs/vqgan/vqgan_vq-16k-d8-l2_conv-f16_8xb16-400k-ema_in1k-256.py':
    71_883_403,
    # MaskGIT's VQGAN (TiTok's teacher): encoder 23,775,104, decoder
    # 30,478,339, codebook 262,144
    'configs/maskgit_vqgan/maskgit-vqgan_vq-1k_conv-f16_8xb32-500k_in1k-256.py':
    54_515_587,
}


@pytest.mark.parametrize('rel_path,count', sorted(PARAMETER_COUNTS.items()))
def test_paper_config_parameter_count(rel_path, count):
    import vistok.models  # noqa: F401
    from vistok.registry import MODELS
    cfg = Config.fromfile(osp.join(REPO_ROOT, rel_path))
    with DefaultScope.overwrite_default_scope('vistok'), \
            torch.device('meta'):
        model = MODELS.build(cfg.model)
    generator = sum(p.numel() for part in model.generator_parts().values()
                    for p in part.parameters())
    assert generator == count
