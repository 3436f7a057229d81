"""LinearProbe: features are the probed branch's mean of the quantized map,
the tokenizer stays frozen and out of the optimizer and the state dict, its
file is required, and a probe on a tokenizer whose last branch carries
class information beats chance on held-out shapes — but not with labels
that carry none."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.evaluator import Evaluator
from mmengine.optim import OptimWrapper

from vistok.datasets.procedural import SHAPES, ProceduralShapesDataset
from vistok.evaluation import Accuracy
from vistok.models.classifiers import LinearProbe
from vistok.models.heads import LinearClsHead
from vistok.models.tokenizers import AutoencoderTokenizer
from vistok.registry import HEADS, MODELS
from vistok.structures import DataSample
from vistok.utils.weights import MissingWeightsError

NUM_CLASSES = len(SHAPES)
CHANCE = 100.0 / NUM_CLASSES


def tokenizer_cfg(num_branches=2, ema=None):
    """A tiny conv tokenizer: 16 px → 8×8 map of ``num_branches`` VQ
    branches of 4 channels (a product quantizer for more than one)."""
    channels = 4 * num_branches
    conv = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                resolution=16, z_channels=channels, num_groups=4)
    vq = dict(type='VectorQuantizer', codebook_size=16, embed_dim=4)
    quantizer = vq if num_branches == 1 else dict(
        type='ProductQuantizer', quantizer=vq, num_branches=num_branches)
    cfg = dict(type='AutoencoderTokenizer',
               encoder=dict(type='ConvEncoder', in_channels=3, **conv),
               quantizer=quantizer,
               decoder=dict(type='ConvDecoder', out_ch=3, **conv))
    if ema is not None:
        cfg['ema'] = ema
    return cfg


def save_tokenizer(tmp_path, cfg, seed=0, name='tokenizer.pth'):
    """Build ``cfg`` with ``seed``, write it as a training checkpoint would
    (``{'state_dict': ...}``) and return the model and the path."""
    torch.manual_seed(seed)
    tokenizer = MODELS.build(cfg).eval()
    path = str(tmp_path / name)
    torch.save(dict(state_dict=tokenizer.state_dict()), path)
    return tokenizer, path


def build_probe(cfg, path, **kwargs):
    """The probe from a config, its tokenizer built with another seed than
    the checkpoint's, so that only loading can make them agree."""
    torch.manual_seed(123)
    probe = MODELS.build(dict(type='LinearProbe', tokenizer=cfg,
                              num_classes=NUM_CLASSES,
                              tokenizer_checkpoint=path, **kwargs))
    probe.init_weights()
    return probe


def images(batch=3, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=gen) * 2 - 1


@pytest.mark.parametrize('num_branches,branch,channels', [
    (2, -1, slice(4, 8)), (2, 0, slice(0, 4)), (1, -1, slice(0, 4))])
def test_features_are_the_branch_mean_of_the_quantized_map(
        tmp_path, num_branches, branch, channels):
    """The probed branch's channels of ``reconstruct(x).quantizer.quantized``
    averaged over the positions; a single-branch tokenizer whole."""
    cfg = tokenizer_cfg(num_branches)
    tokenizer, path = save_tokenizer(tmp_path, cfg)
    probe = build_probe(cfg, path, branch=branch)
    x = images()
    with torch.no_grad():
        quantized = tokenizer.reconstruct(x).quantizer.quantized
    assert quantized.shape == (3, 4 * num_branches, 8, 8)
    expected = quantized[:, channels].mean((2, 3))
    assert torch.allclose(probe.extract_feat(x), expected, atol=1e-6)
    assert probe.in_channels == 4 and probe.head.in_channels == 4
    assert probe(x).shape == (3, NUM_CLASSES)  # mode='tensor': logits


def test_equal_split_for_a_quantizer_without_branches(tmp_path):
    """``num_branches`` splits a plain quantizer's channels evenly."""
    cfg = tokenizer_cfg(1)
    cfg['quantizer']['embed_dim'] = 8
    cfg['encoder']['z_channels'] = cfg['decoder']['z_channels'] = 8
    tokenizer, path = save_tokenizer(tmp_path, cfg)
    probe = build_probe(cfg, path, num_branches=2)
    x = images()
    with torch.no_grad():
        quantized = tokenizer.reconstruct(x).quantizer.quantized
    assert torch.allclose(probe.extract_feat(x),
                          quantized[:, 4:].mean((2, 3)), atol=1e-6)


def test_tokenizer_frozen_outside_optimizer_and_state_dict(tmp_path):
    cfg = tokenizer_cfg()
    _, path = save_tokenizer(tmp_path, cfg)
    probe = build_probe(cfg, path)
    head_params = {id(p) for p in probe.head.parameters()}
    assert {id(p) for p in probe.parameters()} == head_params
    assert all(not key.startswith('tokenizer.')
               for key in probe.state_dict())
    assert set(probe.state_dict()) == {
        'head.norm.running_mean', 'head.norm.running_var',
        'head.norm.num_batches_tracked', 'head.fc.weight', 'head.fc.bias'}
    probe.train()
    assert probe.head.training and not probe.tokenizer.training
    assert not any(m.training for m in probe.tokenizer.modules())
    # a probe checkpoint loads strictly into a fresh probe
    fresh = build_probe(cfg, path)
    fresh.load_state_dict(probe.state_dict(), strict=True)


def test_loss_and_predict(tmp_path):
    cfg = tokenizer_cfg()
    _, path = save_tokenizer(tmp_path, cfg)
    probe = build_probe(cfg, path).eval()
    x = images(4)
    labels = torch.tensor([0, 5, 2, 2])
    samples = [DataSample(gt_label=y) for y in labels]
    logits = probe.head(probe.extract_feat(x))
    loss = probe(x, samples, mode='loss')
    assert set(loss) == {'loss_cls'}
    assert torch.allclose(loss['loss_cls'], F.cross_entropy(logits, labels))
    predicted = probe(x, copy.deepcopy(samples), mode='predict')
    scores = torch.stack([s.pred_score for s in predicted])
    assert torch.allclose(scores, logits.softmax(1))
    assert [int(s.gt_label) for s in predicted] == labels.tolist()
    assert all(s.gt_label.dtype == torch.long and s.gt_label.dim() == 0
               for s in predicted)
    assert [int(s.pred_label) for s in predicted] == \
        logits.argmax(1).tolist()
    with pytest.raises(ValueError, match='needs a gt_label'):
        probe(x, [DataSample() for _ in range(4)], mode='loss')


def test_missing_checkpoint_names_the_config_key(tmp_path):
    for path in (None, str(tmp_path / 'absent.pth')):
        probe = MODELS.build(dict(type='LinearProbe',
                                  tokenizer=tokenizer_cfg(),
                                  num_classes=NUM_CLASSES,
                                  tokenizer_checkpoint=path))
        with pytest.raises(MissingWeightsError,
                           match='model.tokenizer_checkpoint'):
            probe.init_weights()


def test_tokenizer_inference_files_are_loaded_and_named(tmp_path):
    """The tokenizer's own ``init_inference_weights`` (frozen parts its
    checkpoints lack) runs after the checkpoint; its missing file is named
    under ``model.tokenizer``."""
    cfg = tokenizer_cfg()
    _, path = save_tokenizer(tmp_path, cfg)
    tokenizer = MODELS.build(cfg)
    calls = []
    tokenizer.init_inference_weights = lambda: calls.append('filled')
    probe = LinearProbe(tokenizer, NUM_CLASSES, tokenizer_checkpoint=path)
    probe.init_weights()
    assert calls == ['filled']

    def missing_teacher():
        raise MissingWeightsError(None, 'model.teacher_path', 'Get it.')
    tokenizer.init_inference_weights = missing_teacher
    with pytest.raises(MissingWeightsError,
                       match='`model.tokenizer.teacher_path`'):
        probe.init_inference_weights()


def test_checkpoint_of_another_tokenizer_is_refused(tmp_path):
    _, path = save_tokenizer(tmp_path, tokenizer_cfg(1))
    probe = MODELS.build(dict(type='LinearProbe', tokenizer=tokenizer_cfg(2),
                              num_classes=NUM_CLASSES,
                              tokenizer_checkpoint=path))
    with pytest.raises(KeyError, match='lacks'):
        probe.init_weights()


def test_branch_arguments_are_checked():
    with pytest.raises(ValueError, match='model.branch=2'):
        LinearProbe(tokenizer_cfg(2), NUM_CLASSES, branch=2)
    with pytest.raises(ValueError, match='model.num_branches=3'):
        LinearProbe(tokenizer_cfg(2), NUM_CLASSES, num_branches=3)
    with pytest.raises(ValueError, match='model.num_branches=3'):
        LinearProbe(tokenizer_cfg(1), NUM_CLASSES, num_branches=3)
    with pytest.raises(ValueError, match='model.head must not set'):
        LinearProbe(tokenizer_cfg(1), NUM_CLASSES,
                    head=dict(type='LinearClsHead', num_classes=3))
    with pytest.raises(ValueError, match='model.use_ema=True'):
        LinearProbe(tokenizer_cfg(1), NUM_CLASSES, use_ema=True)
    with pytest.raises(TypeError, match='model.tokenizer must'):
        LinearProbe(nn.Linear(2, 2), NUM_CLASSES)


def test_ema_weights_are_probed_when_the_tokenizer_validates_on_them(
        tmp_path):
    cfg = tokenizer_cfg(2, ema=dict(decay=0.9))
    torch.manual_seed(0)
    tokenizer = MODELS.build(cfg).eval()
    with torch.no_grad():  # make the EMA copy differ from the live weights
        for p in tokenizer.ema.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    path = str(tmp_path / 'tokenizer.pth')
    torch.save(dict(state_dict=tokenizer.state_dict()), path)
    x = images()
    with torch.no_grad(), tokenizer.ema_weights():
        on_ema = tokenizer.reconstruct(x).quantizer.quantized[:, 4:]
    with torch.no_grad():
        live = tokenizer.reconstruct(x).quantizer.quantized[:, 4:]
    assert not torch.allclose(on_ema, live)
    for use_ema, expected in ((None, on_ema), (True, on_ema),
                              (False, live)):
        probe = build_probe(cfg, path, use_ema=use_ema)
        assert torch.allclose(probe.extract_feat(x), expected.mean((2, 3)),
                              atol=1e-6)


def test_linear_cls_head_is_batchnorm_without_affine_then_linear():
    torch.manual_seed(0)
    head = HEADS.build(dict(type='LinearClsHead', in_channels=5,
                            num_classes=3))
    assert isinstance(head, LinearClsHead)
    assert [n for n, _ in head.named_parameters()] == ['fc.weight',
                                                      'fc.bias']
    x = torch.randn(16, 5) * 3 + 2
    standardised = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) +
                                                1e-6)
    expected = standardised @ head.fc.weight.t() + head.fc.bias
    assert torch.allclose(head(x), expected, atol=1e-5)  # batch statistics
    head.eval()  # running statistics: one update with momentum 0.1
    mean = 0.1 * x.mean(0)
    var = 0.9 + 0.1 * x.var(0, unbiased=True)
    expected = ((x - mean) / torch.sqrt(var + 1e-6)) @ head.fc.weight.t() \
        + head.fc.bias
    assert torch.allclose(head(x), expected, atol=1e-5)
    plain = LinearClsHead(5, 3, norm=False)
    assert torch.allclose(plain(x), plain.fc(x))
    with pytest.raises(ValueError, match=r'\(B, 5\)'):
        head(torch.randn(2, 5, 3))


# --- the probe learns class information, and only that ------------------
# A tokenizer whose last product branch is trained to carry the shape class
# (a stand-in for ImageFolder's semantic regularisation of that branch),
# small enough to train in a few seconds: plain conv + BatchNorm encoder,
# 16 px → 4×4 map of two FSQ branches of 6 channels.
SEMANTIC_CHANNELS = 6


class TinyShapeEncoder(nn.Module):

    def __init__(self, out_channels, width=16):
        super().__init__()
        self.out_channels = out_channels
        layers = []
        for i, stride in enumerate((1, 2, 1, 2)):
            layers += [nn.Conv2d(3 if i == 0 else width, width, 3, stride, 1),
                       nn.BatchNorm2d(width), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Conv2d(width, out_channels, 1))

    def forward(self, x):
        return self.net(x)


class TinyUpsampleDecoder(nn.Module):

    def __init__(self, in_channels):
        super().__init__()
        self.in_channels = in_channels
        self.conv_out = nn.Conv2d(in_channels, 3, 3, padding=1)

    def forward(self, z):
        return self.conv_out(F.interpolate(z, scale_factor=4))


def shape_tokenizer():
    channels = 2 * SEMANTIC_CHANNELS
    return AutoencoderTokenizer(
        encoder=TinyShapeEncoder(channels),
        quantizer=dict(type='ProductQuantizer', num_branches=2,
                       quantizer=dict(type='FiniteScalarQuantizer',
                                      levels=[5] * SEMANTIC_CHANNELS)),
        decoder=TinyUpsampleDecoder(channels),
        use_quant_conv=False, use_post_quant_conv=False)


def shapes(num, seed):
    """``num`` packed 16 px shapes: uint8 images and their labels."""
    dataset = ProceduralShapesDataset(num_samples=num, image_size=16,
                                      seed=seed,
                                      pipeline=[dict(type='PackInputs')])
    items = [dataset[i] for i in range(num)]
    return (torch.stack([item['inputs'] for item in items]),
            torch.stack([item['data_samples'].gt_label for item in items]))


def train_semantic_branch(tokenizer, images, labels, steps=600):
    """Train the encoder so that the last branch's pooled quantized map
    predicts the class (through a throw-away linear layer); the decoder
    plays no part, so it is not run."""
    inputs = tokenizer.data_preprocessor(dict(inputs=images), False)['inputs']
    classifier = nn.Linear(SEMANTIC_CHANNELS, NUM_CLASSES)
    optimizer = torch.optim.Adam(
        [*tokenizer.parameters(), *classifier.parameters()], lr=3e-3)
    tokenizer.train()
    for _ in range(steps):
        idx = torch.randint(0, len(labels), (64, ))
        quantized = tokenizer.quantizer(tokenizer.encoder(inputs[idx]))
        semantic = quantized.quantized[:, -SEMANTIC_CHANNELS:]
        features = semantic.flatten(2).mean(2)
        loss = F.cross_entropy(classifier(features), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return tokenizer.eval()


def train_probe(path, images, labels, steps=200):
    """A fresh LinearProbe on the checkpoint, trained with its own
    train_step; returns it and its tokenizer's tensors right after
    loading."""
    probe = LinearProbe(shape_tokenizer(), NUM_CLASSES,
                        tokenizer_checkpoint=path)
    probe.init_weights()
    loaded = {k: v.clone() for k, v in probe.tokenizer.named_buffers()}
    wrapper = OptimWrapper(torch.optim.AdamW(probe.parameters(), lr=1e-2))
    probe.train()
    for _ in range(steps):
        idx = torch.randint(0, len(labels), (64, ))
        probe.train_step(
            dict(inputs=images[idx],
                 data_samples=[DataSample(gt_label=y) for y in labels[idx]]),
            wrapper)
    return probe, loaded


def held_out(probe, images, labels):
    """Top-1 (Accuracy through mmengine's Evaluator) and the mean
    probability of the true class, in percent."""
    evaluator = Evaluator(Accuracy(topk=1))
    probe.eval()
    true_prob = []
    for start in range(0, len(labels), 200):
        outputs = probe.val_step(
            dict(inputs=images[start:start + 200],
                 data_samples=[DataSample(gt_label=y)
                               for y in labels[start:start + 200]]))
        true_prob += [float(s.pred_score[s.gt_label]) for s in outputs]
        evaluator.process(outputs)
    return (evaluator.evaluate(len(labels))['accuracy/top1'],
            100 * sum(true_prob) / len(true_prob))


def class_balanced_permutation(labels, gen):
    """A permutation of ``labels`` that spreads every true class evenly
    over all classes, so the permuted labels carry no class information
    (each class's count must be a multiple of the number of classes)."""
    permuted = torch.empty_like(labels)
    for c in range(NUM_CLASSES):
        idx = (labels == c).nonzero()[:, 0]
        idx = idx[torch.randperm(len(idx), generator=gen)]
        permuted[idx] = torch.arange(len(idx)) % NUM_CLASSES
    assert torch.equal(permuted.sort().values, labels.sort().values)
    return permuted


def test_probe_beats_chance_on_held_out_shapes_and_not_on_permuted_labels(
        tmp_path):
    torch.manual_seed(0)
    train_images, train_labels = shapes(3600, seed=0)  # 600 per class
    test_images, test_labels = shapes(600, seed=1)  # other images
    tokenizer = train_semantic_branch(shape_tokenizer(), train_images,
                                      train_labels)
    path = str(tmp_path / 'tokenizer.pth')
    torch.save(dict(state_dict=tokenizer.state_dict()), path)
    saved = tokenizer.state_dict()

    probe, loaded = train_probe(path, train_images, train_labels)
    top1, _ = held_out(probe, test_images, test_labels)
    assert top1 > 2 * CHANCE, top1
    # the tokenizer is the checkpoint's, bit for bit, before and after
    # training (BatchNorm statistics included: it stayed in eval mode)
    after = dict(probe.tokenizer.named_buffers())
    assert set(saved) <= set(after)
    for name, value in saved.items():
        assert torch.equal(loaded[name], value), name
        assert torch.equal(after[name], value), name

    # labels carrying no class information: held-out predictions fall to
    # chance. One run's top-1 is spread widely (5-28 % over seeds: all
    # held-out images of a class tend to get the same arbitrary label), so
    # four permutations are averaged; the mean probability given to the
    # true class is tight (16-17.5 %) and is checked for every run.
    gen = torch.Generator().manual_seed(0)
    runs = [held_out(train_probe(path, train_images,
                                 class_balanced_permutation(train_labels,
                                                            gen))[0],
                     test_images, test_labels) for _ in range(4)]
    mean_top1 = sum(top1 for top1, _ in runs) / len(runs)
    assert mean_top1 < 1.5 * CHANCE, runs
    assert all(prob < 1.5 * CHANCE for _, prob in runs), runs
