"""SemanticRegularizationLoss (ImageFolder's semantic regularisation): the
symmetric InfoNCE between a frozen ViT's projected class token and the mean
of one quantized branch, checked against a hand-written formula, for its
gradients, the quantizer-dropout exclusion and two gloo ranks against one
process.

The "DINOv2" teacher is a randomly initialised, shrunk timm ViT-Tiny at
32 px saved to a file."""
import datetime
import socket

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from _helpers import torch_threads
from vistok.models.losses import SemanticRegularizationLoss
from vistok.models.quantizers import ProductQuantizer
from vistok.registry import LOSSES
from vistok.utils.weights import MissingWeightsError

TEACHER_NAME = 'vit_tiny_patch16_224'
IMG = 32
#: a 2-block, 48-wide ViT keeps building the teacher fast
TEACHER_KWARGS = dict(img_size=IMG, depth=2, embed_dim=48, num_heads=3)
TEACHER = dict(model_name=TEACHER_NAME, model_kwargs=TEACHER_KWARGS)
WIDTH = TEACHER_KWARGS['embed_dim']
P, C, SIDE, S = 2, 4, 3, 3  # branches, channels per branch, grid, scales
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope='module')
def teacher_file(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model(TEACHER_NAME, pretrained=False,
                              **TEACHER_KWARGS)
    path = tmp_path_factory.mktemp('teacher') / 'vit_tiny.pth'
    torch.save(model.state_dict(), path)
    return str(path)


def build(teacher_file, **kwargs):
    torch.manual_seed(1)  # the same projector in every process
    loss = SemanticRegularizationLoss(num_branches=P,
                                      branch_channels=C,
                                      teacher=TEACHER,
                                      teacher_weights_path=teacher_file,
                                      **kwargs)
    loss.init_weights()
    return loss


def batch(size=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(size, 3, IMG, IMG, generator=gen) * 2 - 1
    quantized = torch.randn(size, P * C, SIDE, SIDE, generator=gen)
    return images, quantized


def timm_class_token(teacher_file, images):
    """What the official code feeds the loss: ``timm_model(x)`` of the
    headless model (the class token after the final norm) on ImageNet-
    normalised input."""
    model = timm.create_model(TEACHER_NAME,
                              pretrained=False,
                              num_classes=0,
                              **TEACHER_KWARGS).eval()
    state = torch.load(teacher_file)
    model.load_state_dict(
        {k: v
         for k, v in state.items() if not k.startswith('head.')})
    with torch.no_grad():
        return model(((images + 1) / 2 - IMAGENET_MEAN) / IMAGENET_STD)


def info_nce(t, q, scale):
    """½ [CE(s·t·qᵀ, I) + CE(s·q·tᵀ, I)], written with logsumexp."""
    logits = scale * t @ q.T
    rows = (logits.logsumexp(1) - logits.diagonal()).mean()
    cols = (logits.logsumexp(0) - logits.diagonal()).mean()
    return (rows + cols) / 2


CASES = {
    'official_last_branch': dict(target=-1),
    'clip_norm_ramp': dict(target=0, clip_norm=True, ramp_iters=10),
    'shared_quant_conv': dict(target=1, projector='shared_quant_conv'),
    'all_branches': dict(target='all'),
}


@pytest.mark.parametrize('case', list(CASES))
def test_equals_hand_written_info_nce(teacher_file, case):
    loss = build(teacher_file, loss_weight=0.1, **CASES[case])
    images, quantized = batch()
    quantized.requires_grad_(True)
    quant_conv = nn.Conv2d(WIDTH, C, 1)
    project = quant_conv if case == 'shared_quant_conv' else None
    value = loss(images, quantized, project=project, iteration=4)

    t = timm_class_token(teacher_file, images)
    if case == 'shared_quant_conv':
        t = t @ quant_conv.weight[:, :, 0, 0].T + quant_conv.bias
    else:
        t = t @ loss.projector.weight.T + loss.projector.bias
    means = quantized.mean((2, 3))
    if case == 'all_branches':
        q = means @ loss.branch_mixer.weight.T + loss.branch_mixer.bias
    else:
        branch = 1 if CASES[case]['target'] in (-1, 1) else 0
        q = means[:, branch * C:(branch + 1) * C]
    scale = 1.0
    if case == 'clip_norm_ramp':
        t, q = t / t.norm(dim=1, keepdim=True), q / q.norm(dim=1, keepdim=True)
        scale = 1.0 + 4 / 10 * (100.0 - 1.0)
    expected = 0.1 * info_nce(t, q, scale)
    assert expected > 0.01
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-7)
    grad, = torch.autograd.grad(value, quantized, retain_graph=True)
    expected_grad, = torch.autograd.grad(expected, quantized)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-8)


def test_logit_scale_ramp(teacher_file):
    loss = build(teacher_file, clip_norm=True, logit_scale=2.0,
                 final_logit_scale=100.0, ramp_iters=200)
    scales = [loss.current_logit_scale(i) for i in (0, 50, 200, 10_000)]
    assert scales == pytest.approx([2.0, 2.0 + 98 / 4, 100.0, 100.0])
    assert build(teacher_file, logit_scale=3.0).current_logit_scale(7) == 3.0
    with pytest.raises(ValueError, match='iteration'):
        loss(*batch())


def test_other_branch_and_codebooks_get_no_gradient(teacher_file):
    loss = build(teacher_file, target=-1)
    quantizer = ProductQuantizer(
        dict(type='VectorQuantizer', codebook_size=8, embed_dim=C),
        num_branches=P)
    codebooks = [p for p in quantizer.parameters() if p.requires_grad]
    assert len(codebooks) == P
    images, z = batch()
    z.requires_grad_(True)
    quantized = quantizer(z).quantized
    quantized.retain_grad()
    loss(images, quantized).backward()
    for grad in (quantized.grad, z.grad):
        assert torch.count_nonzero(grad[:, :C]) == 0  # branch 0
        assert torch.count_nonzero(grad[:, C:]) == grad[:, C:].numel()
    for codebook in codebooks:
        assert codebook.grad is None or torch.count_nonzero(
            codebook.grad) == 0
    assert loss.projector.weight.grad.abs().sum() > 0
    assert list(loss.teacher.parameters()) == []  # frozen: buffers only
    assert not any(k.startswith('teacher.') for k in loss.state_dict())


def test_dropped_samples_are_excluded(teacher_file):
    loss = build(teacher_file)
    images, quantized = batch(4)
    num_scales = torch.tensor([S, S - 1, S, S])
    kept = [0, 2, 3]
    expected = loss(images[kept], quantized[kept])
    garbage_images, garbage = batch(4, seed=9)
    images[1], quantized[1] = garbage_images[1], 5 * garbage[1]
    quantized.requires_grad_(True)
    value = loss(images, quantized, num_scales=num_scales, total_scales=S)
    torch.testing.assert_close(value, expected, rtol=0, atol=1e-7)
    value.backward()
    assert torch.count_nonzero(quantized.grad[1]) == 0
    assert torch.count_nonzero(quantized.grad[kept, C:]) > 0


def test_fewer_than_two_kept_samples_give_a_connected_zero(teacher_file):
    loss = build(teacher_file)
    images, quantized = batch(4)
    quantized.requires_grad_(True)
    for num_scales in ([S, 1, 2, 1], [1, 1, 1, 1]):
        value = loss(images, quantized, num_scales=torch.tensor(num_scales),
                     total_scales=S)
        assert value.item() == 0
        loss.zero_grad()
        value.backward()
        assert torch.count_nonzero(loss.projector.weight.grad) == 0
    assert torch.count_nonzero(quantized.grad) == 0


def test_target_none_builds_no_teacher():
    loss = SemanticRegularizationLoss(num_branches=P, branch_channels=C,
                                      target='none')
    loss.init_weights()  # nothing to load
    assert loss.teacher is None and list(loss.parameters()) == []
    quantized = batch()[1].requires_grad_(True)
    value = loss(batch()[0], quantized)
    value.backward()
    assert value.item() == 0 and quantized.grad is not None


def test_missing_teacher_weights_name_the_config_key(tmp_path):
    missing = str(tmp_path / 'dinov2.pth')
    loss = SemanticRegularizationLoss(P, C, teacher=TEACHER,
                                      teacher_weights_path=missing)
    with pytest.raises(MissingWeightsError,
                       match='teacher_weights_path') as err:
        loss.init_weights()
    assert err.value.key == 'teacher_weights_path'
    assert err.value.with_prefix('model.semantic_loss').key == (
        'model.semantic_loss.teacher_weights_path')
    assert TEACHER_NAME in str(err.value)  # how to get it


def test_registry_and_bad_arguments(teacher_file):
    loss = LOSSES.build(
        dict(type='SemanticRegularizationLoss', num_branches=P,
             branch_channels=C, teacher=TEACHER,
             teacher_weights_path=teacher_file))
    assert isinstance(loss, SemanticRegularizationLoss)
    assert loss.loss_name == 'loss_semantic' and loss.loss_weight == 0.1
    with pytest.raises(ValueError, match='target=2'):
        SemanticRegularizationLoss(P, C, target=2, teacher=TEACHER)
    with pytest.raises(ValueError, match='ramp_iters'):
        SemanticRegularizationLoss(P, C, clip_norm=True, teacher=TEACHER)
    with pytest.raises(ValueError, match='teacher_weights_path'):
        SemanticRegularizationLoss(P, C, teacher=dict(TEACHER,
                                                      weights_path='x'))
    loss.init_weights()
    images, quantized = batch()
    with pytest.raises(ValueError, match=r'quantized must be \(B, .* 8'):
        loss(images, quantized[:, :C])
    with pytest.raises(ValueError, match='total_scales'):
        loss(images, quantized, num_scales=torch.full((4, ), S))
    with pytest.raises(ValueError, match='do not pass project'):
        loss(images, quantized, project=nn.Conv2d(WIDTH, C, 1))
    shared = build(teacher_file, projector='shared_quant_conv')
    with pytest.raises(ValueError, match='pass project'):
        shared(images, quantized)
    with pytest.raises(ValueError, match=r'expected \(B, branch_channels\)'):
        shared(images, quantized, project=nn.Conv2d(WIDTH, 2 * C, 1))


# --- two gloo ranks × batch 2 == one process × batch 4 -----------------------
WORLD_SIZE = 2
#: kept scales of the 4 samples; the second case drops one sample of
#: rank 0, so the ranks gather different numbers of rows
DIST_CASES = {'all_kept': [S, S, S, S], 'one_dropped': [S, S - 1, S, S]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def loss_and_grads(teacher_file, rows, num_scales):
    loss = build(teacher_file)
    images, quantized = batch(4)
    quantized = quantized[rows].requires_grad_(True)
    value = loss(images[rows], quantized,
                 num_scales=torch.tensor(num_scales)[rows], total_scales=S)
    value.backward()
    return dict(loss=value.detach(), quantized=quantized.grad,
                projector=loss.projector.weight.grad)


def _worker(rank, port, out_dir, teacher_file):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}',
                            rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=60))
    try:
        rows = slice(2 * rank, 2 * rank + 2)
        result = {name: loss_and_grads(teacher_file, rows, num_scales)
                  for name, num_scales in DIST_CASES.items()}
        torch.save(result, f'{out_dir}/rank{rank}.pt')
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_process(teacher_file, tmp_path):
    """Every rank reports the loss of the whole batch; the gradient each
    rank gets for its rows is ``world_size ×`` the single process's (the
    gather's backward sums over ranks), so gradients averaged over ranks,
    as DDP does, are the single process's gradients."""
    # fork: the workers inherit the imported modules (spawn re-imports torch)
    mp.start_processes(_worker, args=(free_port(), str(tmp_path),
                                      teacher_file),
                       nprocs=WORLD_SIZE, start_method='fork')
    ranks = [torch.load(tmp_path / f'rank{rank}.pt') for rank in (0, 1)]
    with torch_threads(1):
        single = {name: loss_and_grads(teacher_file, slice(0, 4), scales)
                  for name, scales in DIST_CASES.items()}
    for name in DIST_CASES:
        expected = single[name]
        for result in ranks:
            torch.testing.assert_close(result[name]['loss'],
                                       expected['loss'], rtol=1e-6,
                                       atol=1e-7)
        gathered = torch.cat([r[name]['quantized'] for r in ranks])
        torch.testing.assert_close(gathered / WORLD_SIZE,
                                   expected['quantized'], rtol=1e-5,
                                   atol=1e-9)
        averaged = sum(r[name]['projector'] for r in ranks) / WORLD_SIZE
        torch.testing.assert_close(averaged, expected['projector'],
                                   rtol=1e-5, atol=1e-9)
    assert torch.count_nonzero(ranks[0]['one_dropped']['quantized'][1]) == 0
