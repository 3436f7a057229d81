"""TiTok tokenizer (the base of projects/MARVEL): official parameter counts,
exact token round trip, stage-1 proxy training, the legacy latent layout,
and the MARVEL configs built on it."""
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.optim import OptimWrapper
from mmengine.registry import DefaultScope

from _helpers import REPO_ROOT
from vistok.models.tokenizers.titok import TiTokTokenizer
from vistok.utils.weights import MissingWeightsError

TITOK_CONFIGS = osp.join(REPO_ROOT, 'configs/titok')
MARVEL_CONFIGS = osp.join(REPO_ROOT, 'projects/MARVEL/configs')
MASKGIT_BASE = osp.join(REPO_ROOT,
                        'configs/_base_/models/maskgit_vqgan_conv-f16.py')
#: official counts (encoder + VQ + decoder + proxy head) and the teacher's
#: pixel parts (MaskGIT-VQGAN decoder + its 1024 x 256 codebook)
COUNTS = {'l32': 610_314_252, 'b64': 174_073_612, 's128': 52_934_156}
WITH_PIXEL_PARTS = {'l32': 641_054_735, 'b64': 204_814_095, 's128': 83_674_639}
IMAGE = 64
TINY_CONV = dict(ch=8,
                 ch_mult=(1, 1, 2, 2, 4),
                 num_res_blocks=1,
                 resolution=IMAGE,
                 z_channels=8,
                 num_groups=4)


def build(cfg, device='cpu'):
    import vistok.models  # noqa: F401
    from vistok.registry import MODELS
    with DefaultScope.overwrite_default_scope('vistok'), \
            torch.device(device):
        return MODELS.build(cfg)


def num_params(module):
    return sum(p.numel() for p in module.parameters())


def tokenizer_params(model):
    """Parameters of the tokenizer itself: not its EMA copy, not the
    discriminator."""
    return sum(p.numel() for name, p in model.named_parameters()
               if not name.startswith(('ema.', 'discriminator.')))


@pytest.mark.parametrize('name', sorted(COUNTS))
def test_official_parameter_counts(name):
    path = osp.join(TITOK_CONFIGS,
                    f'titok_vq-4k_{name}_8xb32-1m_in1k-256.py')
    model = build(Config.fromfile(path).model, 'meta')
    assert tokenizer_params(model) == COUNTS[name]
    assert num_params(model.teacher) == 0  # frozen: buffers only
    # stage 2: + the MaskGIT-VQGAN decoder and codebook as pixel parts
    stage2 = build(Config.fromfile(path.replace(
        f'_{name}_8xb32-1m', f'_{name}-stage2_8xb32-500k')).model, 'meta')
    assert tokenizer_params(stage2) == WITH_PIXEL_PARTS[name]
    assert stage2.teacher is None
    teacher = build(Config.fromfile(MASKGIT_BASE).model, 'meta')
    pixel_parts = (num_params(teacher.decoder) + num_params(teacher.quantizer))
    assert pixel_parts == 30_478_339 + 262_144
    assert COUNTS[name] + pixel_parts == WITH_PIXEL_PARTS[name]


def tiny_teacher_cfg(codebook_size=16):
    cfg = Config.fromfile(MASKGIT_BASE).model
    cfg.encoder.update(TINY_CONV)
    cfg.decoder.update(TINY_CONV)
    cfg.quantizer.update(codebook_size=codebook_size, embed_dim=8)
    return cfg


def tiny_titok(head='proxy',
               is_legacy=False,
               teacher=None,
               teacher_path=None,
               num_proxy_codes=16,
               pixel_range=None,
               quantizer=None,
               **extra):
    vit = dict(size=None,
               width=32,
               depth=1,
               num_heads=2,
               num_latent_tokens=8,
               img_size=IMAGE,
               patch_size=16)
    torch.manual_seed(0)
    return TiTokTokenizer(encoder=dict(type='LatentTokenEncoder',
                                       out_channels=12,
                                       **vit),
                          quantizer=quantizer or dict(
                              type='VectorQuantizer', codebook_size=64,
                              embed_dim=12, use_l2_norm=True),
                          decoder=dict(type='LatentTokenDecoder',
                                       in_channels=12,
                                       **vit),
                          head=head,
                          teacher=teacher,
                          teacher_path=teacher_path,
                          num_proxy_codes=num_proxy_codes,
                          is_legacy=is_legacy,
                          pixel_range=pixel_range,
                          **extra)


@pytest.mark.parametrize('head', ['proxy', 'pixel'])
def test_decode_of_encode_equals_forward(head):
    teacher = tiny_teacher_cfg() if head == 'proxy' else None
    model = tiny_titok(head, teacher=teacher).eval()
    images = torch.rand(2, 3, IMAGE, IMAGE) * 2 - 1
    with torch.no_grad():
        out = model(images, mode='tensor')
        tokens = model.encode(images)
        decoded = model.decode(tokens)
        head_output = model.head_output(tokens)
    assert tokens.shape == (2, 8)
    assert out.reconstruction.shape == (2, 3, IMAGE, IMAGE)
    assert torch.equal(decoded, out.reconstruction)
    assert torch.equal(tokens, out.quantizer.indices)
    if head == 'proxy':  # proxy logits over the teacher's 16 codes
        assert head_output.shape == (2, 16, 4, 4)
        assert torch.equal(decoded,
                           model.teacher.decode(head_output.argmax(1)))
    else:
        assert torch.equal(head_output, decoded)


def test_pixel_range_maps_inputs_and_pixel_outputs():
    model = tiny_titok('pixel', pixel_range=(0.0, 1.0)).eval()
    images = torch.rand(2, 3, IMAGE, IMAGE) * 2 - 1
    with torch.no_grad():
        tokens = model.encode(images)
        raw = model.head(model.decoder(model.quantizer.decode(tokens)))
        assert torch.equal(
            tokens, model.quantizer.encode(model.encoder((images + 1) * 0.5)))
        torch.testing.assert_close(model.decode(tokens), raw * 2 - 1)
        assert torch.equal(model.decode(tokens),
                           model(images, mode='tensor').reconstruction)


def test_legacy_layout_reshapes_without_permute():
    model = tiny_titok(is_legacy=True).eval()
    plain = tiny_titok(is_legacy=False).eval()
    plain.load_state_dict(model.state_dict())
    images = torch.rand(2, 3, IMAGE, IMAGE) * 2 - 1
    captured = {}
    model.encoder.ln_post.register_forward_hook(
        lambda m, i, o: captured.setdefault('h', o))
    with torch.no_grad():
        legacy = model.encoder(images)
        fixed = plain.encoder(images)
        hidden = captured['h']  # (B, K, width) before the projection
        batch, tokens, width = hidden.shape
        proj = model.encoder.proj_out  # its weights, without the hook
        expected = F.linear(
            hidden.reshape(batch, width, tokens).transpose(1, 2), proj.weight,
            proj.bias)
        fixed_expected = F.linear(hidden, proj.weight, proj.bias)
    assert torch.equal(legacy, expected.transpose(1, 2))
    assert torch.equal(fixed, fixed_expected.transpose(1, 2))
    assert not torch.allclose(legacy, fixed)


def test_stage1_train_step_lowers_proxy_cross_entropy(tmp_path):
    torch.manual_seed(1)
    teacher = build(tiny_teacher_cfg())
    path = str(tmp_path / 'teacher.pth')
    torch.save(teacher.state_dict(), path)
    model = tiny_titok(teacher=tiny_teacher_cfg(), teacher_path=path)
    with pytest.raises(MissingWeightsError, match='model.teacher_path'):
        tiny_titok(teacher=tiny_teacher_cfg()).init_weights()
    model.init_weights()
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(model.teacher.get_buffer(name), tensor)
    assert not any(k.startswith('teacher.') for k in model.state_dict())

    generator = torch.Generator().manual_seed(2)
    data = dict(inputs=[
        torch.randint(
            0, 256, (3, IMAGE, IMAGE), dtype=torch.uint8, generator=generator)
        for _ in range(4)
    ])
    wrapper = OptimWrapper(torch.optim.Adam(model.parameters(), lr=3e-3))
    model.train()
    logs = [model.train_step(data, wrapper) for _ in range(25)]
    history = [float(log['loss_proxy_ce']) for log in logs]
    assert history[-1] < 0.5 * history[0]
    # accuracy on the teacher's codes beats always guessing its commonest code
    codes = model.teacher.encode(model.data_preprocessor(data)['inputs'])
    majority = codes.flatten().bincount().max().item() / codes.numel()
    assert float(logs[-1]['proxy_acc']) > majority + 0.1

    model.eval()
    samples = model.predict(model.data_preprocessor(data)['inputs'])
    assert samples[0].pred_img.shape == (3, IMAGE, IMAGE)
    assert samples[0].tokens.shape == (8, )


@pytest.mark.parametrize('depth', [1, 2, 4])
def test_marvel_residual_lfq_token_budget(depth):
    """MARVEL-L-32*D: K latent tokens x D residual LFQ depths = K·D ids per
    image (4,096 codes per depth), and decode(encode(x)) is the forward."""
    quantizer = dict(type='ResidualQuantizer', depth=depth,
                     depth_scales='pow2',
                     quantizer=dict(type='LookupFreeQuantizer',
                                    codebook_bits=12))
    model = tiny_titok('pixel', quantizer=quantizer).eval()
    images = torch.rand(2, 3, IMAGE, IMAGE) * 2 - 1
    with torch.no_grad():
        ids = model.encode(images)
        assert ids.shape == (2, 8, depth) and ids[0].numel() == 8 * depth
        assert int(ids.max()) < 4096
        out = model(images, mode='tensor')
        assert torch.equal(model.decode(ids), out.reconstruction)


def test_marvel_stage1_starts_from_titok_weights(tmp_path):
    """MARVEL stage 1 keeps TiTok's encoder, decoder and proxy head and drops
    its VQ codebook (the residual LFQ has none); anything else that does not
    fit is refused."""
    from vistok.utils.partial_load import PartialLoadError
    titok = tiny_titok('proxy')
    path = tmp_path / 'titok.pth'
    torch.save({'state_dict': titok.state_dict()}, path)
    rlfq = dict(type='ResidualQuantizer', depth=2, depth_scales='pow2',
                quantizer=dict(type='LookupFreeQuantizer', codebook_bits=12))
    marvel = tiny_titok('proxy', quantizer=rlfq)
    marvel.pretrained = {'titok': dict(checkpoint=str(path))}
    with pytest.raises(PartialLoadError, match='quantizer'):
        marvel.init_weights()
    marvel.pretrained['titok']['allow_unexpected'] = [r'quantizer\..*']
    marvel.init_weights()
    marvel_state = marvel.state_dict()
    for key, value in titok.state_dict().items():
        if not key.startswith('quantizer.'):
            assert torch.equal(marvel_state[key], value), key


def test_maskgit_samples_on_marvel_tokens_decode_to_images():
    """A MaskGIT over MARVEL ids (B, K, D): position-major sequence with a
    per-depth vocabulary; samples decode with the tokenizer and a seed
    reproduces them."""
    from vistok.models.generators.maskgit import MaskGITGenerator
    depth = 2
    quantizer = dict(type='ResidualQuantizer', depth=depth,
                     depth_scales='pow2',
                     quantizer=dict(type='LookupFreeQuantizer',
                                    codebook_bits=12))
    tokenizer = tiny_titok('pixel', quantizer=quantizer).eval()
    torch.manual_seed(0)
    generator = MaskGITGenerator(
        arch=dict(dim=32, depth=2, num_heads=2, ffn_dim=64),
        num_classes=10, vocab_size=4096 * depth, depth_vocab_size=4096,
        token_shape=(8, depth), steps=4, choice_temperature=4.5,
        sampler=dict(type='TokenSampler', guidance_scale=2.0)).eval()
    images = torch.rand(2, 3, IMAGE, IMAGE) * 2 - 1
    with torch.no_grad():
        # teacher-forced loss on real tokens is finite
        tokens = tokenizer.encode(images)
        assert torch.isfinite(
            generator.loss(tokens, torch.tensor([1, 2]))['loss_ce'])
        labels = torch.tensor([3, 7, 3])
        samples = generator.generate(
            labels, generator=torch.Generator().manual_seed(5))
        again = generator.generate(
            labels, generator=torch.Generator().manual_seed(5))
        other = generator.generate(
            labels, generator=torch.Generator().manual_seed(6))
        pixels = tokenizer.decode(samples)
    assert samples.shape == (3, 8, depth)
    assert int(samples.min()) >= 0 and int(samples.max()) < 4096
    assert torch.equal(samples, again) and not torch.equal(samples, other)
    assert pixels.shape == (3, 3, IMAGE, IMAGE)
    assert torch.isfinite(pixels).all()


def test_imagenet_stage2_configs_load_their_pretrained_files(tmp_path):
    """The ``model.pretrained`` entries of the TiTok-L-32 and MARVEL-L-32*2
    stage-2 configs, applied to tiny models: TiTok stage 2 = stage 1 +
    pixel parts from the MaskGIT-VQGAN file; MARVEL stage 2 = MARVEL stage
    1 + pixel parts of a (converted) TiTok stage-2 checkpoint."""
    def entries(name, files):
        folder = MARVEL_CONFIGS if name.startswith('marvel') else TITOK_CONFIGS
        cfg = Config.fromfile(osp.join(folder, name)).model.pretrained
        return {key: dict(value, checkpoint=files[key])
                for key, value in cfg.items()}

    def trained(model):
        """``model`` with weights unlike any fresh initialisation."""
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param))
        return model

    def save(model, name):
        path = str(tmp_path / f'{name}.pth')
        torch.save({'state_dict': model.state_dict()}, path)
        return path

    rlfq = dict(type='ResidualQuantizer', depth=2, depth_scales='pow2',
                quantizer=dict(type='LookupFreeQuantizer', codebook_bits=12))
    stage2 = dict(pixel_decoder=tiny_teacher_cfg(),
                  frozen_parts=('encoder', 'quantizer'), ema=dict(decay=0.9))
    teacher = build(tiny_teacher_cfg())
    titok1 = trained(tiny_titok(ema=dict(decay=0.9)))
    titok2 = tiny_titok(**stage2)
    titok2.pretrained = entries(
        'titok_vq-4k_l32-stage2_8xb32-500k_in1k-256.py',
        dict(stage1=save(titok1, 'titok1'), pixel_parts=save(teacher, 't')))
    titok2.init_weights()
    state = titok2.state_dict()
    for key, value in titok1.state_dict().items():
        if not key.startswith('ema.'):
            assert torch.equal(state[key], value), key
    for key, value in teacher.decoder.state_dict().items():
        assert torch.equal(state[f'pixel_decoder.{key}'], value), key
    assert torch.equal(state['pixel_codebook.weight'],
                       teacher.quantizer.codebook)

    marvel1 = trained(tiny_titok(quantizer=rlfq, ema=dict(decay=0.9)))
    marvel2 = tiny_titok(quantizer=rlfq, **stage2)
    marvel2.pretrained = entries(
        'marvel_rlfq-4k-x2_l32-stage2_8xb32-500k_in1k-256.py',
        dict(stage1=save(marvel1, 'marvel1'),
             pixel_parts=save(titok2, 'titok2')))
    marvel2.init_weights()
    state = marvel2.state_dict()
    for key, value in marvel1.state_dict().items():
        if not key.startswith('ema.'):
            assert torch.equal(state[key], value), key
    for key, value in titok2.state_dict().items():
        if key.startswith('pixel_'):
            assert torch.equal(state[key], value), key
