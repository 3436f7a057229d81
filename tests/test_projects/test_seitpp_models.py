"""SeiT++ models (projects/SeiTpp/seitpp/{classifiers,mtm}.py): the MTM
masks, loss and a short pre-training run; the two classifiers against a
timm reference, their losses, predictions, checkpoint loading; paper sizes
on the meta device."""
import math
import re
from functools import partial

import pytest
import scipy.stats
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import DefaultScope

from _helpers import torch_threads
from projects.SeiTpp.seitpp.classifiers import (
    SeiTViTClassifier,
    TokenViTClassifier,
    resize_pos_embed,
)
from projects.SeiTpp.seitpp.mtm import (
    MaskedTokenAccuracy,
    MaskedTokenModel,
    MaskRatio,
    masked_token_loss,
    sample_masks,
)
from vistok.evaluation import Accuracy
from vistok.models.backbones.vit import TIMM_BLOCK_NAMES
from vistok.registry import MODELS
from vistok.structures import DataSample
from vistok.utils.weights import MissingWeightsError

# tiny sizes: 8x8 codes, 2x2 patches -> 16 patches
V, CODE_DIM, S, P = 16, 8, 8, 2
TINY_VIT = dict(embed_dim=32, depth=2, num_heads=2)
TINY_MTM = dict(num_codes=V, code_dim=CODE_DIM, img_size=S, patch_size=P,
                decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
                **TINY_VIT)


def tiny_mtm(**kwargs):
    return MaskedTokenModel(**dict(TINY_MTM, **kwargs))


def tiny_token_vit(**kwargs):
    return TokenViTClassifier(**dict(dict(num_classes=5, num_codes=V,
                                          code_dim=CODE_DIM, img_size=S),
                                     **TINY_VIT, **kwargs))


def tiny_seit_vit(**kwargs):
    return SeiTViTClassifier(**dict(dict(num_classes=5, code_dim=CODE_DIM,
                                         img_size=S), **TINY_VIT, **kwargs))


# --- masks ------------------------------------------------------------------
@pytest.mark.parametrize('cfg', [
    None,  # the script's TruncNormal(0.45, 0.25) on [0.4, 1.0]
    dict(min=0.5, max=0.9, mean=0.55, std=0.25),
    dict(min=0.7, max=0.7, mean=0.7, std=0.0),  # 0.7 * 10 = 7.000000000000001
])
def test_mask_invariants_over_many_draws(cfg):
    """Over 300 draws: exactly ⌈N·r⌉ masked and ⌈N·min⌉ dropped patches in
    every sample, dropped ⊆ masked, r in [min, max], and the masks are the
    first patches of a per-sample random ordering (re-derived from the same
    generator)."""
    ratio_cfg = MaskRatio.of(cfg)
    generator = torch.Generator().manual_seed(0)
    for draw in range(300):
        batch = 1 + draw % 5
        num_patches = (196, 16, 10)[draw % 3]
        state = generator.get_state()
        masked, dropped, ratio = sample_masks(batch, num_patches, cfg,
                                              generator)
        assert ratio_cfg.min <= ratio <= ratio_cfg.max
        num_masked = math.ceil(round(num_patches * ratio, 9))
        num_dropped = math.ceil(round(num_patches * ratio_cfg.min, 9))
        assert masked.shape == dropped.shape == (batch, num_patches)
        assert masked.sum(1).tolist() == [num_masked] * batch
        assert dropped.sum(1).tolist() == [num_dropped] * batch
        assert not (dropped & ~masked).any()
        # the same draws, independently: ratio, then one ordering per sample
        replay = torch.Generator()
        replay.set_state(state)
        ratio_cfg.sample(generator=replay)
        order = torch.rand(batch, num_patches, generator=replay).argsort(1)
        for b in range(batch):
            assert set(masked[b].nonzero().flatten().tolist()) == set(
                order[b, :num_masked].tolist())
            assert set(dropped[b].nonzero().flatten().tolist()) == set(
                order[b, :num_dropped].tolist())
    if cfg is not None and cfg['std'] == 0:
        assert num_dropped == num_masked == 7


def test_mask_ratio_is_the_truncated_normal_and_patches_are_uniform():
    """The ratio follows scipy's truncnorm (Kolmogorov-Smirnov, and the
    analytic mean), and with a fixed ratio every patch is dropped equally
    often (each sample its own ordering)."""
    cfg = MaskRatio()  # 0.45, 0.25 on [0.4, 1.0]
    ratios = cfg.sample((4000, ), torch.Generator().manual_seed(1)).numpy()
    ref = scipy.stats.truncnorm((cfg.min - cfg.mean) / cfg.std,
                                (cfg.max - cfg.mean) / cfg.std,
                                loc=cfg.mean, scale=cfg.std)
    assert scipy.stats.kstest(ratios, ref.cdf).pvalue > 0.01
    assert cfg.expected() == pytest.approx(ref.mean(), abs=1e-12)
    masked, dropped, _ = sample_masks(2000, 16, cfg,
                                      torch.Generator().manual_seed(2),
                                      ratio=0.5)
    # 7 of 16 dropped per sample: each patch in 7/16 of the samples
    freq = dropped.float().mean(0)
    assert (freq - 7 / 16).abs().max() < 0.05
    assert len({tuple(row.tolist()) for row in dropped[:50]}) > 45
    with pytest.raises(ValueError, match='outside mask_ratio'):
        sample_masks(2, 16, cfg, ratio=0.3)
    with pytest.raises(ValueError, match='min <= max'):
        MaskRatio(min=0.8, max=0.5)


# --- MTM loss and model -----------------------------------------------------
def reference_mtm_loss(logits, targets, masked, p, eps):
    """Per token (1 − ε)·(−log p_y) + ε·mean_c(−log p_c) (the official
    ``LabelSmoothingCrossEntropy``), mean over each p×p patch, mean over
    masked patches — written out with loops."""
    batch, height, width = targets.shape
    logp = logits.detach().double().log_softmax(-1).reshape(
        batch, height, width, -1)
    total, count = 0.0, 0
    for b in range(batch):
        for i in range(height // p):
            for j in range(width // p):
                if not masked[b, i * (width // p) + j]:
                    continue
                cell = []
                for di in range(p):
                    for dj in range(p):
                        lp = logp[b, i * p + di, j * p + dj]
                        y = targets[b, i * p + di, j * p + dj]
                        cell.append((1 - eps) * -lp[y] + eps * -lp.mean())
                total += sum(cell) / len(cell)
                count += 1
    return float(total / count)


@pytest.mark.parametrize('eps', [0.0, 0.1])
def test_mtm_loss_is_the_masked_patch_mean_and_ignores_unmasked(eps):
    torch.manual_seed(0)
    logits = torch.randn(3, S * S, V)
    targets = torch.randint(0, V, (3, S, S))
    masked, _, _ = sample_masks(3, 16, None,
                                torch.Generator().manual_seed(0))
    loss = masked_token_loss(logits, targets, masked, P, eps)['loss_ce']
    assert loss.item() == pytest.approx(
        reference_mtm_loss(logits, targets, masked, P, eps), rel=1e-5)
    # tokens of unmasked patches: any logits give the same loss
    token_mask = masked.reshape(3, 4, 4).repeat_interleave(
        2, 1).repeat_interleave(2, 2).reshape(3, S * S)
    perturbed = torch.where(token_mask[..., None], logits,
                            torch.randn_like(logits) * 10)
    assert torch.equal(
        masked_token_loss(perturbed, targets, masked, P, eps)['loss_ce'],
        loss)
    # one token of a masked patch: the loss moves
    b, t = token_mask.nonzero()[0].tolist()
    logits[b, t, targets.flatten(1)[b, t]] += 5.0  # its target code
    assert masked_token_loss(logits, targets, masked, P,
                             eps)['loss_ce'] != loss


def test_mtm_never_sees_masked_codes_and_loss_uses_its_masks():
    """Changing the codes of masked (dropped or mask-token) patches leaves
    every logit unchanged; the model's loss is the masked-token loss of its
    own masks."""
    model = tiny_mtm().eval()
    codes = torch.randint(0, V, (4, S, S))
    masked, dropped, _ = sample_masks(4, 16, None,
                                      torch.Generator().manual_seed(3),
                                      ratio=0.7)
    assert (masked & ~dropped).any()  # some masked patches are kept
    token_mask = masked.reshape(4, 4, 4).repeat_interleave(
        2, 1).repeat_interleave(2, 2)
    other = torch.where(token_mask, (codes + 1) % V, codes)
    with torch.no_grad():
        logits = model.decode(model.encode(codes, masked, dropped), masked,
                              dropped)
        again = model.decode(model.encode(other, masked, dropped), masked,
                             dropped)
        # the tokens of one visible patch of sample 0 changed
        patch = (~masked[0]).nonzero()[0].item()
        row, col = divmod(patch, 4)
        visible = codes.clone()
        visible[0, 2 * row:2 * row + 2, 2 * col:2 * col + 2] += 1
        visible %= V
        moved = model.decode(model.encode(visible, masked, dropped), masked,
                             dropped)
    assert logits.shape == (4, S * S, V)
    assert torch.allclose(logits, again, atol=1e-6)
    assert not torch.allclose(logits, moved, atol=1e-4)  # visible codes count
    torch.manual_seed(7)
    loss = model.loss(codes)
    torch.manual_seed(7)
    out = model.forward_mtm(codes)
    assert loss['loss_mtm'].item() == pytest.approx(reference_mtm_loss(
        out.logits, codes, out.masked, P, 0.0), rel=1e-5)
    assert loss['mask_ratio'].item() == pytest.approx(out.ratio)
    with pytest.raises(ValueError, match='num_codes=16'):
        model.loss(codes + V)
    with pytest.raises(ValueError, match='img_size'):
        model.loss(codes[:, :6, :6])


def test_encoder_and_decoder_inputs_follow_mage():
    """Encoder input: class token, then the patches not dropped in raster
    order, the masked ones as ``mask_token`` + their position; decoder
    input: every masked or dropped position holds the decoder's class-token
    vector (+ its learned position)."""
    torch.manual_seed(0)
    model = tiny_mtm().eval()
    with torch.no_grad():
        for param in (model.mask_token, model.decoder_pos_embed):
            param.normal_()
    codes = torch.randint(0, V, (3, S, S))
    masked, dropped, _ = sample_masks(3, 16, None,
                                      torch.Generator().manual_seed(5),
                                      ratio=0.75)
    seen = {}
    model.blocks[0].register_forward_pre_hook(
        lambda m, args: seen.setdefault('enc', args[0]))
    model.decoder_blocks[0].register_forward_pre_hook(
        lambda m, args: seen.setdefault('dec', args[0]))
    with torch.no_grad():
        model.decode(model.encode(codes, masked, dropped), masked, dropped)
    enc, dec = seen['enc'], seen['dec']
    assert enc.shape == (3, 1 + 16 - 7, 32)  # ⌈16 · 0.4⌉ = 7 dropped
    pos = model.pos_embed[0]
    for b in range(3):
        kept = (~dropped[b]).nonzero().flatten().tolist()
        torch.testing.assert_close(enc[b, 0], model.cls_token[0, 0] + pos[0])
        for slot, patch in enumerate(kept, start=1):
            if masked[b, patch]:
                torch.testing.assert_close(
                    enc[b, slot], model.mask_token[0, 0] + pos[1 + patch])
        cls = dec[b, 0] - model.decoder_pos_embed[0, 0]
        for patch in range(16):
            start = dec[b, 1 + patch] - model.decoder_pos_embed[0, 1 + patch]
            assert torch.allclose(start, cls, atol=1e-6) == bool(
                masked[b, patch])


def test_head_unfolds_patches_into_raster_tokens_with_tied_embedding():
    """Logit of token (i·p + a, j·p + b) = LN(GELU(fc(x_ij)[a, b])) · E_c +
    bias_c (the official ``MlmLayer`` order), and no gradient reaches the
    embedding matrix through the head."""
    torch.manual_seed(0)
    model = tiny_mtm()
    head = model.mlm_head
    x = torch.randn(2, 16, 32)
    embedding = model.token_embed.embedding.weight
    logits = head(x, (4, 4), embedding)
    assert logits.shape == (2, S * S, V)
    hidden = head.fc(x).reshape(2, 16, P, P, CODE_DIM)
    for i, j, a, b in [(0, 0, 0, 0), (1, 2, 0, 1), (3, 3, 1, 1),
                       (2, 1, 1, 0)]:
        h = F.layer_norm(F.gelu(hidden[:, i * 4 + j, a, b]), (CODE_DIM, ),
                         head.norm.weight, head.norm.bias, 1e-5)
        torch.testing.assert_close(
            logits[:, (i * P + a) * S + j * P + b],
            h @ embedding.t() + head.bias)
    logits.sum().backward()
    assert embedding.grad is None and head.bias.grad is not None


def structured_codes(num, templates, generator, noise=0.1):
    """Codes of one of the ``templates`` each, ``noise`` of them replaced by
    random codes: the masked tokens are predictable from the visible
    ones."""
    chosen = templates[torch.randint(0, len(templates), (num, ),
                                     generator=generator)]
    flip = torch.rand(chosen.shape, generator=generator) < noise
    return torch.where(flip, torch.randint(0, V, chosen.shape,
                                           generator=generator), chosen)


def test_mtm_pretraining_lowers_loss_and_beats_most_frequent_code():
    """150 AdamW steps on 512 template-plus-noise code grids: the loss
    falls and the held-out masked-token accuracy (``predict`` +
    ``MaskedTokenAccuracy``) beats twice the most-frequent-code share.
    Seen when written: loss 2.76 → 2.46, accuracy 35 % vs a share of
    8.8 % (a position-wise majority guess gets 23 %)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    templates = torch.randint(0, V, (8, S, S), generator=generator)
    train = structured_codes(512, templates, generator)
    held_out = structured_codes(256, templates, generator)
    most_frequent = torch.bincount(train.flatten(), minlength=V).argmax()
    share = (held_out == most_frequent).float().mean().item()

    model = tiny_mtm(code_dim=16, embed_dim=64, num_heads=4,
                     decoder_embed_dim=64, decoder_num_heads=4,
                     token_dropout=0.0, decoder_dropout=0.0,
                     decoder_attn_dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3,
                                  betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    with torch_threads(1):  # tiny matrices: threads only contend
        for _ in range(150):
            batch = train[torch.randint(0, len(train), (32, ),
                                        generator=generator)]
            loss = model(batch, mode='loss')['loss_mtm']
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.15, (first, last)

    model.eval()
    metric = MaskedTokenAccuracy()
    for chunk in held_out.split(64):
        samples = model(chunk, mode='predict')
        # eval masks: ⌈16 · E[r]⌉ patches of 4 tokens each
        count = 4 * math.ceil(16 * MaskRatio().expected())
        assert [s.mtm_count for s in samples] == [count] * len(chunk)
        metric.process(None, [s.to_dict() for s in samples])
    accuracy = metric.compute_metrics(metric.results)['accuracy']
    print(f'MTM loss {first:.3f} -> {last:.3f}; held-out masked-token '
          f'accuracy {accuracy:.1f}% vs most-frequent-code share '
          f'{100 * share:.1f}%')
    assert accuracy > 2 * 100 * share, (accuracy, 100 * share)
    # predict is deterministic (its own seeded generator)
    assert [s.mtm_correct for s in model.predict(held_out[:8])] == [
        s.mtm_correct for s in model.predict(held_out[:8])]


# --- classifiers ------------------------------------------------------------
def test_registered_under_distinct_names():
    with DefaultScope.overwrite_default_scope('vistok'):
        seit = MODELS.build(dict(type='SeiTViTClassifier', num_classes=5,
                                 code_dim=CODE_DIM, img_size=S, **TINY_VIT))
        token = MODELS.build(dict(type='TokenViTClassifier', num_classes=5,
                                  num_codes=V, code_dim=CODE_DIM,
                                  img_size=S, **TINY_VIT))
        mtm = MODELS.build(dict(type='MaskedTokenModel', **TINY_MTM))
    assert {type(m) for m in (seit, token, mtm)} == {
        SeiTViTClassifier, TokenViTClassifier, MaskedTokenModel}
    assert MODELS.get('SeiTViTClassifier') is not MODELS.get(
        'TokenViTClassifier')


def timm_reference(model, token_input):
    """The official construction on timm (``models.py`` /
    ``models_mtm.py``): timm's ViT with img_size = grid·2, patch 2, the
    patch conv replaced by the model's stem, features = norm(mean of the
    patch tokens) → head; the model's weights copied in."""
    conv = model.patch_embed.proj
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=S, patch_size=2, in_chans=CODE_DIM, num_classes=5,
        embed_dim=32, depth=2, num_heads=2, mlp_ratio=4, qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6))
    ref.patch_embed.proj = nn.Conv2d(CODE_DIM, 32, conv.kernel_size,
                                     conv.stride, conv.padding)
    ref.patch_embed.strict_img_size = False
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith('token_embed.'):
            continue
        for ours, theirs in TIMM_BLOCK_NAMES.items():
            key = key.replace(ours, theirs)
        state[key.replace('head.fc.', 'head.')] = value
    ref.load_state_dict(state)
    ref.eval()

    def forward(inputs):
        if token_input:
            emb = model.token_embed
            x = F.layer_norm(F.embedding(inputs, emb.embedding.weight),
                             (CODE_DIM, ), emb.norm.weight, emb.norm.bias,
                             1e-6).permute(0, 3, 1, 2)
        else:
            x = inputs
        x = ref.patch_embed(x)
        x = torch.cat([ref.cls_token.expand(x.shape[0], -1, -1), x], 1)
        x = ref.blocks(x + ref.pos_embed)
        return ref.head(ref.norm(x[:, 1:].mean(1)))

    return forward


@pytest.mark.parametrize('token_input', [False, True])
def test_classifier_equals_official_construction_on_timm(token_input):
    torch.manual_seed(0)
    model = (tiny_token_vit() if token_input else tiny_seit_vit()).eval()
    nn.init.normal_(model.head.fc.weight)  # make the head count
    inputs = (torch.randint(0, V, (3, S, S)) if token_input else
              torch.randn(3, CODE_DIM, S, S))
    with torch.no_grad():
        logits = model(inputs)
        expected = timm_reference(model, token_input)(inputs)
    assert logits.shape == (3, 5)
    assert model.grid_size == (4, 4)  # k4 s2 p1 and k2 s2 both halve 8
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    wrong_grid = inputs[..., :6, :6]
    with pytest.raises(ValueError, match='img_size'):
        model(wrong_grid)
    if token_input:
        with pytest.raises(ValueError, match='integer'):
            model(inputs.float())
    else:
        with pytest.raises(ValueError, match='code_dim'):
            model(inputs[:, :4])


def test_hard_and_soft_losses_equal_their_formulas():
    torch.manual_seed(0)
    model = tiny_token_vit(label_smoothing=0.1).eval()
    codes = torch.randint(0, V, (4, S, S))
    labels = torch.tensor([0, 3, 1, 4])
    with torch.no_grad():
        logp = model(codes).double().log_softmax(-1)
        hard = model.loss(codes, labels)['loss_cls'].item()
        listed = model.loss(codes, [DataSample(gt_label=int(y))
                                    for y in labels])['loss_cls'].item()
        soft_targets = torch.softmax(torch.randn(4, 5), -1)
        soft = model.loss(codes, soft_targets)['loss_cls'].item()
    nll = -logp[torch.arange(4), labels]
    assert hard == pytest.approx(
        (0.9 * nll + 0.1 * -logp.mean(-1)).mean().item(), rel=1e-6)
    assert listed == hard
    # soft: −Σ t log p, no second smoothing
    assert soft == pytest.approx(
        -(soft_targets.double() * logp).sum(-1).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match='num_classes=5'):
        model.loss(codes, torch.zeros(4, 7))
    with pytest.raises(ValueError, match='num_classes=5'):
        model.loss(codes, torch.tensor([0, 1, 2, 5]))


def test_predict_feeds_accuracy():
    """``predict`` → ``Accuracy`` equals the top-1 of the logits."""
    torch.manual_seed(0)
    model = tiny_seit_vit().eval()
    nn.init.normal_(model.head.fc.weight)
    inputs = torch.randn(6, CODE_DIM, S, S)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    logits = model(inputs)
    samples = model(inputs, labels, mode='predict')
    metric = Accuracy(topk=(1, 2))
    metric.process(None, [s.to_dict() for s in samples])
    top1 = metric.compute_metrics(metric.results)['top1']
    assert top1 == pytest.approx(
        100 * (logits.argmax(1) == labels).float().mean().item())
    assert [int(s.gt_label) for s in samples] == labels.tolist()
    # soft targets: gt_label is their argmax, gt_score kept
    soft = F.one_hot(labels, 5).float() * 0.9 + 0.02
    samples = model.predict(inputs, soft)
    assert [int(s.gt_label) for s in samples] == labels.tolist()
    assert torch.equal(samples[0].gt_score, soft[0])


def test_parameter_names_follow_the_layer_decay_convention():
    model = tiny_token_vit()
    assert model.num_layers == TINY_VIT['depth'] + 1
    allowed = (r'(cls_token|pos_embed|patch_embed\.proj\.(weight|bias)|'
               r'token_embed\..*|blocks\.[01]\..*|norm\..*|head\.fc\..*)')
    names = [n for n, _ in model.named_parameters()]
    assert all(re.fullmatch(allowed, n) for n in names), names
    assert 'token_embed.embedding.weight' in names
    assert not any(n.startswith('token_embed') for n, _ in
                   tiny_seit_vit().named_parameters())


def test_classifier_loads_the_mtm_encoder(tmp_path):
    """``pretrained`` = an MTM checkpoint: every encoder tensor is the MTM's
    (the fixed sin-cos ``pos_embed`` becomes the learned one's start), the
    head keeps its initialisation; another grid gets the bicubic resize of
    the position embedding; a missing file names ``model.pretrained``."""
    torch.manual_seed(0)
    mtm = tiny_mtm()
    with torch.no_grad():
        for param in mtm.parameters():
            param.add_(torch.randn_like(param))  # unlike any fresh init
    path = str(tmp_path / 'mtm.pth')
    torch.save(dict(state_dict=mtm.state_dict(), meta=dict(iter=1)), path)

    torch.manual_seed(1)
    model = tiny_token_vit(pretrained=path)
    head = model.head.fc.weight.detach().clone()
    model.init_weights()
    ours, theirs = model.state_dict(), mtm.state_dict()
    encoder = [k for k in ours if not k.startswith('head.')]
    assert len(encoder) == len(ours) - 2
    for key in encoder:
        assert torch.equal(ours[key], theirs[key]), key
    assert torch.equal(model.head.fc.weight, head)
    assert model.head.fc.weight.std() < 1e-4  # the recipe's σ = 2e-5

    bigger = tiny_token_vit(img_size=12, pretrained=path)  # 6x6 patches
    bigger.init_weights()
    patches = theirs['pos_embed'][:, 1:].reshape(1, 4, 4, 32).permute(
        0, 3, 1, 2)
    resized = F.interpolate(patches, size=(6, 6), mode='bicubic',
                            align_corners=False)
    torch.testing.assert_close(
        bigger.pos_embed.detach(),
        torch.cat([theirs['pos_embed'][:, :1],
                   resized.flatten(2).transpose(1, 2)], 1))
    assert resize_pos_embed(theirs['pos_embed'], (4, 4)) is theirs[
        'pos_embed']

    with pytest.raises(MissingWeightsError, match='model.pretrained'):
        tiny_token_vit(pretrained=str(tmp_path / 'none.pth')).init_weights()


# --- paper sizes ------------------------------------------------------------
def block_params(dim, mlp_ratio=4):
    """A pre-LN ViT block: two LayerNorms, qkv, proj, fc1, fc2 (biased)."""
    hidden = int(dim * mlp_ratio)
    return (2 * 2 * dim + dim * 3 * dim + 3 * dim + dim * dim + dim +
            dim * hidden + hidden + hidden * dim + dim)


def classifier_params(dim, depth, conv_kernel, token_embed):
    """Stem conv (32 → dim), cls, pos (1 + 196), blocks, norm, 1000-way
    head; + Embedding(391, 32) and its LayerNorm for the token input."""
    count = (32 * dim * conv_kernel**2 + dim + dim + 197 * dim +
             depth * block_params(dim) + 2 * dim + dim * 1000 + 1000)
    return count + (391 * 32 + 2 * 32 if token_embed else 0)


def test_paper_sizes_build_on_meta_with_the_expected_counts():
    """ViT-B / ViT-S of both classifiers and the ViT-B MTM (decoder 512-d,
    4 blocks, 16 heads) against hand counts; the SeiT ViT-B also against
    timm's ViT-B/16 with its 3→768 16×16 patch conv swapped for the 32→768
    4×4 Stem-Adapter (same 197 positions)."""
    with torch.device('meta'):
        models = {
            'seit_b': SeiTViTClassifier(),
            'seit_s': SeiTViTClassifier(embed_dim=384, num_heads=6),
            'token_b': TokenViTClassifier(),
            'token_s': TokenViTClassifier(embed_dim=384, num_heads=6),
            'mtm_b': MaskedTokenModel(),
        }
        timm_b = timm.create_model('vit_base_patch16_224', pretrained=False)

    def count(model):
        return sum(p.numel() for p in model.parameters())

    assert count(models['seit_b']) == classifier_params(768, 12, 4, False)
    assert count(models['seit_s']) == classifier_params(384, 12, 4, False)
    assert count(models['token_b']) == classifier_params(768, 12, 2, True)
    assert count(models['token_s']) == classifier_params(384, 12, 2, True)
    assert count(timm_b) == 86_567_656
    assert count(models['seit_b']) == (count(timm_b) - (3 * 256 * 768 + 768)
                                       + (32 * 16 * 768 + 768))
    mtm = (391 * 32 + 2 * 32  # token embedding + LayerNorm
           + 32 * 768 * 4 + 768  # 2x2 patch conv
           + 768 + 768  # cls, mask token (pos_embed is a fixed buffer)
           + 12 * block_params(768) + 2 * 768  # encoder
           + 768 * 512 + 512 + 197 * 512  # decoder embed, learned pos
           + 4 * block_params(512) + 2 * 512  # decoder
           + 512 * 128 + 128 + 2 * 32 + 391)  # MlmLayer
    assert count(models['mtm_b']) == mtm
    assert models['mtm_b'].pos_embed.shape == (1, 197, 768)
    assert models['token_b'].num_layers == 13
    print({k: count(m) for k, m in models.items()})
