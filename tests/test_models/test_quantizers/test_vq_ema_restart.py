"""VectorQuantizer's training-time options: EMA codebook, masks, dead-code
restart, k-means init, rotation trick and external-codebook mixing
(single process; the multi-rank behaviour is in test_vq_dist.py, the EMA
update formula in test_vq_ema_update.py)."""
import copy
import math

import pytest
import torch
from safetensors.torch import save_file

from vistok.models.quantizers.vq import VectorQuantizer

NUM_CLUSTERS = 16
DIM = 4
NOISE = 0.1


def cluster_centres(seed=0):
    return 3 * torch.randn(NUM_CLUSTERS, DIM,
                           generator=torch.Generator().manual_seed(seed))


def clustered(centres, num, generator):
    """``num`` vectors around ``centres``, as a sequence ``(1, D, num)``."""
    which = torch.randint(len(centres), (num, ), generator=generator)
    vectors = centres[which] + NOISE * torch.randn(
        num, centres.shape[1], generator=generator)
    return vectors.t()[None]


def collapse(quantizer):
    """Code 0 at the data's centre, every other code far away: all vectors
    pick code 0 (usage 1/K)."""
    far = 100 + torch.randn(quantizer.codebook_size - 1, quantizer.embed_dim,
                            generator=torch.Generator().manual_seed(3))
    quantizer.set_codes(
        torch.cat([torch.zeros(1, quantizer.embed_dim), far]))


def usage(quantizer, centres):
    quantizer.eval()
    with torch.no_grad():
        out = quantizer(
            clustered(centres, 512, torch.Generator().manual_seed(99)))
    quantizer.train()
    return out.stats['usage'].item()


@pytest.mark.parametrize('options', [
    dict(ema_decay=0.9, restart_threshold=1.0),
    dict(restart_threshold=1.0, kmeans_init=True, kmeans_iters=2),
])
def test_masked_positions_change_nothing(options):
    """A padded batch gives the same losses, stats and codebook updates as
    its real tokens alone; padded positions still get indices and codes."""
    generator = torch.Generator().manual_seed(0)
    z = clustered(cluster_centres(), 24, generator).reshape(1, DIM, 4, 6)
    z = torch.cat([z, z.flip(-1)])  # (2, D, 4, 6)
    mask = torch.rand(2, 4, 6, generator=generator) > 0.4
    padded = z.clone()
    padded.movedim(1, -1)[~mask] = 1e3  # garbage that would win any code
    real = z.movedim(1, -1)[mask].t()[None]  # (1, D, n)

    results = []
    for inputs, inputs_mask in ((padded, mask), (real, None)):
        torch.manual_seed(0)
        quantizer = VectorQuantizer(NUM_CLUSTERS, DIM, **options).train()
        collapse(quantizer)
        torch.manual_seed(1)  # same restart / k-means draws
        outs = [quantizer(inputs, inputs_mask) for _ in range(3)]
        results.append((quantizer, outs))
    (masked_q, masked_outs), (real_q, real_outs) = results
    for masked, real_out in zip(masked_outs, real_outs):
        assert masked.loss.keys() == real_out.loss.keys()
        for key in masked.loss:
            torch.testing.assert_close(masked.loss[key], real_out.loss[key])
        for key in ('code_counts', 'usage', 'perplexity', 'restarted_codes'):
            torch.testing.assert_close(masked.stats[key], real_out.stats[key])
        assert torch.equal(masked.indices[mask], real_out.indices[0])
    assert masked_outs[0].stats['restarted_codes'] > 0
    for key, value in masked_q.state_dict().items():
        torch.testing.assert_close(value, real_q.state_dict()[key])
    last = masked_outs[-1]
    assert last.indices.shape == mask.shape
    assert torch.equal(last.quantized, masked_q.decode(last.indices))


def test_all_masked_batch_gives_zero_loss_and_no_counts():
    quantizer = VectorQuantizer(8, DIM, ema_decay=0.9)
    z = torch.randn(2, DIM, 3, requires_grad=True)
    out = quantizer(z, torch.zeros(2, 3, dtype=torch.bool))
    assert out.loss['loss_commitment'] == 0
    assert out.stats['code_counts'].sum() == 0
    sum(out.loss.values()).backward()


def test_bad_mask_and_bad_input_raise():
    quantizer = VectorQuantizer(8, DIM)
    z = torch.randn(2, DIM, 3, 5)
    with pytest.raises(ValueError, match=r'mask .*\(2, 3, 5\)'):
        quantizer(z, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match='mask .*bool'):
        quantizer(z, torch.ones(2, 3, 5))
    with pytest.raises(ValueError, match=r'z must be .*\(2, 5, 3, 5\)'):
        quantizer(torch.randn(2, DIM + 1, 3, 5))
    with pytest.raises(ValueError, match=r'z must be .*\(2, 4\)'):
        quantizer.encode(torch.randn(2, DIM))


@pytest.mark.parametrize('options, match', [
    (dict(ema_decay=1.0), 'ema_decay'),
    (dict(ema_eps=0), 'ema_eps'),
    (dict(gradient_estimator='gumbel'), 'gradient_estimator'),
    (dict(restart_threshold=0), 'restart_threshold'),
    (dict(restart_interval=0), 'restart_interval'),
    (dict(kmeans_iters=0), 'kmeans_iters'),
    (dict(mix_mode='blend'), 'mix_mode'),
    (dict(mix_mode='recursive', use_external_codebook=True), 'ema_decay'),
    (dict(frozen_codebook=True, ema_decay=0.99), 'ema_decay'),
    (dict(frozen_codebook=True, kmeans_init=True), 'kmeans_init'),
])
def test_invalid_options_raise(options, match):
    with pytest.raises(ValueError, match=match):
        VectorQuantizer(8, DIM, **options)


@pytest.mark.parametrize('ema_decay', [0.9, None])
@pytest.mark.parametrize('restart', [True, False])
def test_dead_codes_revive(ema_decay, restart):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(
        NUM_CLUSTERS, DIM, ema_decay=ema_decay,
        restart_threshold=1.0 if restart else None).train()
    collapse(quantizer)
    centres = cluster_centres()
    optimizer = (torch.optim.SGD(quantizer.parameters(), lr=1.0)
                 if ema_decay is None else None)
    assert usage(quantizer, centres) < 0.2
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        out = quantizer(clustered(centres, 256, generator))
        if optimizer is not None:
            optimizer.zero_grad()
            sum(out.loss.values()).backward()
            optimizer.step()
    if restart:
        assert usage(quantizer, centres) > 0.9
    else:
        assert usage(quantizer, centres) < 0.2


def test_restart_interval_and_reset_statistics():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(NUM_CLUSTERS, DIM, ema_decay=0.9,
                                restart_threshold=1.0,
                                restart_interval=3).train()
    collapse(quantizer)
    centres, generator = cluster_centres(), torch.Generator().manual_seed(1)
    restarted = []
    for _ in range(3):
        z = clustered(centres, 64, generator)
        restarted.append(quantizer(z).stats['restarted_codes'].item())
    assert restarted[:2] == [0, 0] and restarted[2] > 0
    assert quantizer.restart_steps == 3
    # restarted codes are batch vectors and start afresh: usage at the
    # threshold, cluster size 1, code = EMA sum / smoothed size
    fresh = quantizer.code_usage == 1.0
    assert fresh.sum() == restarted[2]
    vectors = z[0].t()
    for code in quantizer.codebook[fresh]:
        assert ((vectors - code).abs().max(-1).values < 1e-5).any()
    assert (quantizer.ema_cluster_size[fresh] == 1).all()
    sizes, eps = quantizer.ema_cluster_size, quantizer.ema_eps
    smoothed = (sizes + eps) / (sizes.sum() + NUM_CLUSTERS * eps) * sizes.sum()
    torch.testing.assert_close(quantizer.codebook,
                               quantizer.ema_embed_sum / smoothed[:, None])


@pytest.mark.parametrize('ema_decay', [0.9, None])
def test_kmeans_init_beats_random_init(ema_decay):
    centres = cluster_centres()
    z = clustered(centres, 512, torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    quantizer = VectorQuantizer(NUM_CLUSTERS, DIM, ema_decay=ema_decay,
                                kmeans_init=True)
    random_init_loss = quantizer.eval()(z).loss['loss_commitment']
    assert not quantizer.kmeans_initialized
    quantizer.train()(z)
    assert quantizer.kmeans_initialized
    kmeans_loss = quantizer.eval()(z).loss['loss_commitment']
    assert kmeans_loss < 0.1 * random_init_loss

    # the flag is a checkpointed buffer and the init happens once
    torch.manual_seed(0)
    quantizer = VectorQuantizer(NUM_CLUSTERS, DIM, kmeans_init=True).train()
    quantizer(z)
    state = quantizer.state_dict()
    assert state['kmeans_initialized'].item() is True
    codebook = quantizer.codebook.detach().clone()
    quantizer(clustered(centres, 512, torch.Generator().manual_seed(2)))
    assert torch.equal(quantizer.codebook, codebook)
    resumed = VectorQuantizer(NUM_CLUSTERS, DIM, kmeans_init=True).train()
    resumed.load_state_dict(state)
    resumed(z)
    assert torch.equal(resumed.codebook, codebook)


def test_kmeans_init_spherical_codes_are_unit():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(NUM_CLUSTERS, DIM, use_l2_norm=True,
                                kmeans_init=True).train()
    quantizer(clustered(cluster_centres(), 256,
                        torch.Generator().manual_seed(1)))
    torch.testing.assert_close(quantizer.codebook.norm(dim=-1),
                               torch.ones(NUM_CLUSTERS))


@pytest.mark.parametrize('options', [
    dict(),
    dict(use_l2_norm=True),
    dict(in_channels=6),
])
def test_rotation_trick_value_and_gradient(options):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(NUM_CLUSTERS, DIM,
                                gradient_estimator='rotation_trick',
                                **options)
    with torch.no_grad():
        quantizer.codebook.normal_()
    channels = options.get('in_channels', DIM)
    z = torch.randn(2, channels, 3, 4, requires_grad=True)
    out = quantizer(z)
    assert torch.equal(out.quantized, quantizer.decode(out.indices))
    grad_out = torch.randn_like(z)
    (out.quantized * grad_out).sum().backward()
    assert quantizer.codebook.grad is None  # codes learn from their loss
    if options:
        return
    # Fifty et al. 2024: d/de = (|q|/|e|) R^T g with
    # R = I - 2 r r^T + 2 q^ e^T, r = (e^ + q^) / |e^ + q^|
    e = z.detach().movedim(1, -1).reshape(-1, DIM)
    q = quantizer.codebook.detach()[out.indices.reshape(-1)]
    g = grad_out.movedim(1, -1).reshape(-1, DIM)
    e_hat = e / e.norm(dim=-1, keepdim=True)
    q_hat = q / q.norm(dim=-1, keepdim=True)
    r = e_hat + q_hat
    r = r / r.norm(dim=-1, keepdim=True)
    eye = torch.eye(DIM).expand(len(e), DIM, DIM)
    rotation = (eye - 2 * r[:, :, None] * r[:, None, :] +
                2 * q_hat[:, :, None] * e_hat[:, None, :])
    torch.testing.assert_close(
        torch.einsum('nij,nj->ni', rotation, e_hat), q_hat)  # R e^ = q^
    torch.testing.assert_close(rotation @ rotation.transpose(1, 2), eye)
    expected = (q.norm(dim=-1, keepdim=True) / e.norm(dim=-1, keepdim=True) *
                torch.einsum('nij,ni->nj', rotation, g))
    grad = z.grad.movedim(1, -1).reshape(-1, DIM)
    torch.testing.assert_close(grad, expected)
    assert not torch.allclose(grad, g)  # not the straight-through copy


def mixing_share(mix_mode, steps, ramp):
    """External share of the codebook in use after ``steps`` of a linear
    ramp ``λ_t = t / ramp``. Every position is masked, so the EMA sees no
    data and only the mix moves the codebook."""
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, DIM, ema_decay=0.99, mix_mode=mix_mode,
                                use_external_codebook=True).train()
    initial = quantizer.codebook.clone()
    external = torch.randn(8, DIM)
    quantizer.load_external_codebook(external)
    z, mask = torch.randn(1, DIM, 5), torch.zeros(1, 5, dtype=torch.bool)
    for step in range(1, steps + 1):
        quantizer.set_mix_weight(step / ramp)
        quantizer(z, mask)
    moved = quantizer.code_vectors() - initial
    direction = external - initial
    return ((moved * direction).sum() / direction.pow(2).sum()).item()


def test_mix_modes_replace_and_recursive():
    ramp, steps = 480, 48  # 10% of the ramp
    replace = mixing_share('replace', steps, ramp)
    recursive = mixing_share('recursive', steps, ramp)
    assert replace == pytest.approx(steps / ramp, abs=1e-4)
    compounded = 1 - math.prod(1 - i / ramp for i in range(1, steps + 1))
    assert recursive == pytest.approx(compounded, abs=1e-3)
    assert recursive > 0.9 and replace < 0.11


def test_replace_mix_never_touches_ema_statistics():
    z = clustered(cluster_centres(), 64, torch.Generator().manual_seed(1))
    states = []
    for weight in (0.0, 0.7):
        torch.manual_seed(0)
        quantizer = VectorQuantizer(NUM_CLUSTERS, DIM, ema_decay=0.9,
                                    use_external_codebook=True)
        quantizer.load_external_codebook(torch.zeros(NUM_CLUSTERS, DIM))
        quantizer.set_mix_weight(weight)
        quantizer.train()(z)
        states.append(quantizer.state_dict())
    learned = states[0]['codebook']
    for key in ('codebook', 'ema_cluster_size', 'ema_embed_sum'):
        assert torch.equal(states[0][key], states[1][key]), key
    # in use: (1 - λ) C + λ C_ext, with C_ext = 0 here
    quantizer.set_mix_weight(0.7)
    torch.testing.assert_close(quantizer.code_vectors(), 0.3 * learned)
    quantizer.set_mix_weight(0.0)
    assert torch.equal(quantizer.code_vectors(), learned)


def test_replace_mix_with_gradient_codebook():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, DIM, use_external_codebook=True)
    external = torch.randn(8, DIM)
    quantizer.load_external_codebook(external)
    quantizer.set_mix_weight(1.0)
    assert torch.equal(quantizer.code_vectors(), external)
    quantizer.set_mix_weight(0.25)
    out = quantizer(torch.randn(2, DIM, 5))
    assert torch.equal(out.quantized, quantizer.decode(out.indices))
    out.loss['loss_codebook'].backward()
    assert quantizer.codebook.grad.abs().sum() > 0


def test_external_codebook_loading(tmp_path):
    external = torch.randn(8, DIM)
    missing = tmp_path / 'llm_embeddings.pt'
    quantizer = VectorQuantizer(8, DIM, ema_decay=0.99,
                                external_codebook_path=str(missing))
    assert torch.equal(quantizer.external_codebook, torch.zeros(8, DIM))
    with pytest.raises(RuntimeError, match='loaded'):
        quantizer.set_mix_weight(0.5)
    with pytest.raises(FileNotFoundError, match=str(missing)):
        quantizer.init_weights()

    torch.save(external, missing)
    quantizer.init_weights()
    assert torch.equal(quantizer.external_codebook, external)
    quantizer.set_mix_weight(0.5)
    state = quantizer.state_dict()  # λ and the table are checkpointed
    assert state['mix_weight'] == 0.5
    assert torch.equal(state['external_codebook'], external)

    table = tmp_path / 'table.safetensors'
    save_file({'embeddings': 2 * external}, str(table))
    quantizer.load_external_codebook(table)
    assert torch.equal(quantizer.external_codebook, 2 * external)
    with pytest.raises(ValueError, match=r'\(8, 4\).*\(8, 5\)'):
        quantizer.load_external_codebook(torch.zeros(8, 5))
    with pytest.raises(ValueError, match='mix weight'):
        quantizer.set_mix_weight(1.5)
    with pytest.raises(ValueError, match='use_external_codebook'):
        VectorQuantizer(8, DIM).set_mix_weight(0.5)


def test_state_dict_round_trip_restores_every_buffer():
    z = clustered(cluster_centres(), 64, torch.Generator().manual_seed(1))
    options = dict(ema_decay=0.9, restart_threshold=1.0, kmeans_init=True,
                   use_external_codebook=True, mix_mode='recursive')
    torch.manual_seed(0)
    quantizer = VectorQuantizer(NUM_CLUSTERS, DIM, **options).train()
    quantizer.load_external_codebook(torch.randn(NUM_CLUSTERS, DIM))
    quantizer.set_mix_weight(0.1)
    for _ in range(3):
        quantizer(z)
    resumed = VectorQuantizer(NUM_CLUSTERS, DIM, **options)
    resumed.load_state_dict(quantizer.state_dict())
    torch.manual_seed(5)
    expected = quantizer(z)
    torch.manual_seed(5)
    out = resumed.train()(z)
    assert torch.equal(out.quantized, expected.quantized)
    for key, value in quantizer.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


@pytest.mark.parametrize('options', [
    dict(ema_decay=0.9, restart_threshold=1.0),
    dict(gradient_estimator='rotation_trick'),
])
def test_bf16_autocast_keeps_indices(options):
    generator = torch.Generator().manual_seed(2)
    centre = torch.randn(1, 32, generator=generator)
    z = (centre + 0.05 * torch.randn(64, 32, generator=generator)).t()[None]
    torch.manual_seed(0)
    quantizer = VectorQuantizer(256, 32, **options).train()
    quantizer.set_codes(centre +
                        0.05 * torch.randn(256, 32, generator=generator))
    quantizers = [quantizer, copy.deepcopy(quantizer)]
    torch.manual_seed(1)  # same restart draws
    expected = quantizers[0](z)
    torch.manual_seed(1)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = quantizers[1](z)
    assert torch.equal(out.indices, expected.indices)
    assert out.quantized.dtype == torch.float32
    for key, value in quantizers[0].state_dict().items():
        assert torch.equal(quantizers[1].state_dict()[key], value), key
