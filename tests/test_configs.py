"""Every config under configs/ and projects/*/configs/ loads and builds its
model (DESIGN §4)."""
import glob
import os
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from reference import maskgit_vqgan_official, taming_official

from _helpers import REPO_ROOT

CONFIGS = sorted(
    p for pattern in ('configs/**/*.py', 'projects/*/configs/**/*.py')
    for p in glob.glob(osp.join(REPO_ROOT, pattern), recursive=True)
    if '_base_' not in p.split(osp.sep))

#: where the project's code lives (tests/data/configs: the tests' own
#: tiny configs; work dirs hold dumped copies of configs)
SOURCE_DIRS = ('configs', 'projects', 'vistok', 'tools', 'bench')
#: directories that are not source
NOT_SOURCE = {'.git', '.venv', 'work_dirs', '__pycache__'}


def walk_py_files(top):
    """Every ``.py`` file under ``top`` (``os.walk``: independent of the
    glob patterns above, hidden names included), skipping
    :data:`NOT_SOURCE` directories."""
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d not in NOT_SOURCE]
        yield from (osp.join(root, f) for f in files if f.endswith('.py'))


def is_config_file(path):
    """A Python config: a module-level ``_base_ = ...`` or ``model = ...``
    assignment (every vistok config has one or both)."""
    with open(path) as f:
        return any(line.startswith(('_base_ =', '_base_=', 'model =',
                                    'model='))
                   for line in f)


def test_every_config_file_is_collected():
    """The parametrised tests below run on exactly the configs of the
    repository: every config directory (``configs/<algorithm>/``, each
    project's ``configs/``) is collected and non-empty, and no config file
    lies anywhere else (outside ``_base_`` folders and the tests' own
    ``tests/data/configs``) where the glob would miss it."""
    projects = osp.join(REPO_ROOT, 'projects')
    roots = [osp.join(REPO_ROOT, 'configs')] + sorted(
        osp.join(projects, name, 'configs') for name in os.listdir(projects)
        if osp.isdir(osp.join(projects, name)) and name not in NOT_SOURCE)
    walked = {
        p for root in roots for p in walk_py_files(root)
        if '_base_' not in osp.relpath(p, root).split(osp.sep)}
    assert set(CONFIGS) == walked
    # every algorithm folder and every project has collected configs
    folders = [osp.join(roots[0], d) for d in os.listdir(roots[0])
               if d != '_base_' and osp.isdir(osp.join(roots[0], d))]
    for folder in folders + roots[1:]:
        assert any(p.startswith(folder + osp.sep) for p in CONFIGS), (
            f'{osp.relpath(folder, REPO_ROOT)} holds no collected config')
    # and no config lives in the source tree outside the collected roots
    stray = sorted(
        osp.relpath(p, REPO_ROOT)
        for top in SOURCE_DIRS for p in walk_py_files(osp.join(REPO_ROOT, top))
        if not any(p.startswith(root + osp.sep) for root in roots)
        and is_config_file(p))
    assert stray == []


def build_model(cfg, device='cpu'):
    import vistok.models  # noqa: F401
    from vistok.registry import MODELS
    with DefaultScope.overwrite_default_scope('vistok'), \
            torch.device(device):
        return MODELS.build(cfg.model)


def trained_parameters(model):
    """A tokenizer's generator parts (not its discriminator / EMA copy), or
    every parameter of other models (frozen parts are buffers)."""
    parts = (model.generator_parts().values()
             if hasattr(model, 'generator_parts') else [model])
    return sum(p.numel() for part in parts for p in part.parameters())


def fill_external_codebooks(model):
    """A random stand-in for the tables quantizers read from files (e.g.
    UniCode's LLM embedding), norms around 1 as LLaMA's."""
    from vistok.models.quantizers import VectorQuantizer
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, VectorQuantizer) and (
                module.use_external_codebook
                and not module.external_codebook_loaded):
            rows = module.codebook_size + 8  # an LLM vocabulary to select
            table = torch.randn(rows, module.embed_dim, generator=generator)
            table *= (1.0 + torch.rand(rows, 1, generator=generator)) / (
                table.norm(dim=1, keepdim=True))
            module.load_external_codebook(
                table if module.external_codebook_key is not None else
                table[:module.codebook_size])


#: folders whose configs differ from a parent whose forward runs here only
#: in sizes (TiTok's token-count x size grid: titok_vq-4k_s128 runs; the
#: grid test checks each cell is one override away)
REAL_FORWARD_COVERED_BY_PARENT = (osp.join(REPO_ROOT, 'configs', 'titok',
                                           'grid') + osp.sep, )


@pytest.mark.parametrize('path', CONFIGS,
                         ids=[osp.relpath(p, REPO_ROOT) for p in CONFIGS])
def test_config_builds_its_model(path):
    """Every config loads, follows the naming rule and builds its model (on
    the meta device: cheap for any size); tokenizers below 100M parameters
    are also built for real and reconstruct a 64 px image, or one of the
    fixed size of an encoder with position embeddings (the generators' own
    tests run their forward passes on small instances)."""
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'vistok'
    name = osp.splitext(osp.basename(path))[0]
    assert len(name.split('_')) >= 5, (
        f'{name} does not follow {{algorithm}}_{{quantizer}}-{{codebook}}_'
        '{backbone}_{gpus}xb{batch}-{schedule}_{data}-{res}')
    batch = cfg.train_dataloader.batch_size
    assert f'xb{batch}-' in name, f'{name}: batch size is {batch}'
    model = build_model(cfg, 'meta')
    assert trained_parameters(model) > 0
    if hasattr(model, 'reconstruct') and not path.startswith(
            REAL_FORWARD_COVERED_BY_PARENT):
        # real forward for small tokenizers (buffers included: UniCode's
        # 32,000 x 4,096 EMA / LLM tables would take gigabytes)
        if trained_parameters(model) < 100e6 and sum(
                t.numel() for t in model.buffers()) < 100e6:
            model = build_model(cfg)
            fill_external_codebooks(model)
            grid = getattr(model.encoder, 'grid_size', (4, 4))
            size = [g * getattr(model.encoder, 'patch_size', 16) for g in grid]
            with torch.no_grad():
                images = torch.rand(1, 3, *size) * 2 - 1
                out = model(images, mode='tensor')
            assert out.reconstruction.shape == images.shape


#: taming's f16 layout (``ddconfig`` of ``configs/imagenet_vqgan.yaml`` in
#: CompVis/taming-transformers, the released vqgan_imagenet_f16_16384's)
TAMING_F16 = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                  attn_resolutions=(16, ), resolution=256, z_channels=256,
                  double_z=False, in_channels=3, out_ch=3, dropout=0.0)

#: configs whose count is that of the official module definitions
#: (``tests/reference/``, written from the official code, not from vistok),
#: built at the released sizes on the meta device
OFFICIAL_MODELS = {
    # taming-transformers' vqgan_imagenet_f16_16384 (76,073,859)
    'configs/vqgan/vqgan_vq-16k_conv-f16_8xb12-400k_in1k-256.py':
    lambda: taming_official.VQModel(TAMING_F16, n_embed=16384, embed_dim=256),
    # the same with 8-d codes: LlamaGen's VQ-16 ("72M"; 71,883,403)
    'configs/vqgan/vqgan_vq-16k-d8-l2_conv-f16_8xb16-400k-ema_in1k-256.py':
    lambda: taming_official.VQModel(TAMING_F16, n_embed=16384, embed_dim=8),
    # MaskGIT's VQGAN as TiTok releases it (TiTok's teacher; 54,515,587)
    'configs/maskgit_vqgan/maskgit-vqgan_vq-1k_conv-f16_8xb32-500k_in1k-256.py':
    maskgit_vqgan_official.PretrainedTokenizer,
}


@pytest.mark.parametrize('rel_path', sorted(OFFICIAL_MODELS))
def test_config_parameter_count_equals_the_official_model(rel_path):
    with torch.device('meta'):
        official = OFFICIAL_MODELS[rel_path]()
    expected = sum(p.numel() for p in official.parameters())
    cfg = Config.fromfile(osp.join(REPO_ROOT, rel_path))
    assert trained_parameters(build_model(cfg, 'meta')) == expected


#: parameter counts of paper configs (tokenizers: encoder, quantizer,
#: decoder; generators: the transformer without the tokenizer). Values
#: computed by vistok when the config was written (regression values)
#: unless a source is named: only the rounded paper figures are
#: independent of the code under test.
PARAMETER_COUNTS = {
    # VAR-d16 = VAR's own module definitions (tests/test_tools_var_
    # converter.py builds them: ``RELEASED[16]``)
    'configs/var/var_msrq-4k_d16_8xb96-200e_in1k-256.py': 310_283_520,
    'configs/var/var_msrq-4k_d17_8xb96-200e_in1k-256.py': 371_191_905,
    # LlamaGen GPT-B ("111M")
    'configs/ar/ar_vq-16k_gpt-b_8xb32-300e_in1k-256.py': 110_888_448,
    # TiTok-S-128's U-ViT generator
    'configs/maskgit/maskgit_vq-4k_uvit-titok-s128_32xb64-500k_in1k-256.py':
    294_990_848,
    # ImageFolder's generator: VAR-d17 ("362M" = its 17 blocks) / d16 with
    # two parallel branch heads over the 286 positions of MSVR10P2
    'projects/ImageFolder/configs/var_msvr10p2-4k_d17_8xb96-350e_in1k-256.py':
    375_258_593,
    'projects/ImageFolder/configs/var_msvr10p2-4k_d16_8xb96-350e_in1k-256.py':
    314_111_232,
    # UniCode (the paper says "104M"; its configs are not released): the
    # HQ-VAE's encoder 29,298,176, 1x1 convs around the 4,096-d codes
    # 9,181,440, decoder 42,449,795 (the EMA / LLM codebooks are buffers)
    'projects/UniCode/configs/unicode-hqvae_hq-llm32k-d4096_conv-f16_8xb48-'
    '50e_llava-256.py': 80_929_411,
    'projects/UniCode/configs/unicode-rqvae_rq-llm32k-d4096_conv-f32_8xb48-'
    '50e_llava-256.py': 102_177_411,
}


@pytest.mark.parametrize('rel_path,count', sorted(PARAMETER_COUNTS.items()))
def test_paper_config_parameter_count(rel_path, count):
    cfg = Config.fromfile(osp.join(REPO_ROOT, rel_path))
    assert trained_parameters(build_model(cfg, 'meta')) == count
