"""VectorQuantizer with an LLM's embedding table as its external codebook
(UniCode, Zheng et al. 2024): the LLM codebook source (selected rows, ids,
table hash in checkpoints) and ``mix_mode='unicode'`` (norm-matched mixing
with the latent-norm control of the official ``EMAVectorQuantizer``)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmengine.optim import OptimWrapper
from safetensors.torch import save_file

from vistok.models.quantizers.vq import VectorQuantizer
from vistok.registry import MODELS, QUANTIZERS
from vistok.structures import DataSample
from vistok.utils.llm_embedding import table_sha256
from vistok.utils.weights import MissingWeightsError

KEY = 'model.embed_tokens.weight'
DIM = 4
# Row norms of the hand-made 16 x 4 table; the rows with norm >= 1 sorted by
# norm: 12 (1.01), 6 (1.02), 4 (1.05), 10 (1.1), 7 (1.2), 15 (1.25), 1, ...
NORMS = [0.5, 1.3, 2.0, 0.9, 1.05, 3.0, 1.02, 1.2, 0.99, 1.5, 1.1, 2.5, 1.01,
         0.2, 1.4, 1.25]
NUM_CODES = 6
SELECTED = [4, 6, 7, 10, 12, 15]  # the 6 smallest norms >= 1, by token id
ELIGIBLE = 12  # rows with norm >= 1


def hand_table(seed=0, norms=NORMS, dim=DIM):
    directions = F.normalize(
        torch.randn(len(norms), dim,
                    generator=torch.Generator().manual_seed(seed)), dim=-1)
    return directions * torch.tensor(norms)[:, None]


def write_llm(path, table):
    """A safetensors "LLM" holding the embedding table and another tensor."""
    save_file({KEY: table, 'lm_head.weight': torch.zeros(3, 2)}, str(path))
    return str(path)


def llm_quantizer(path, **options):
    options = dict(dict(ema_decay=0.9, external_codebook_path=str(path),
                        external_codebook_key=KEY,
                        external_codebook_in_checkpoint=False,
                        mix_mode='unicode'), **options)
    return VectorQuantizer(options.pop('codebook_size', NUM_CODES),
                           options.pop('embed_dim', DIM), **options)


def latent(scale, seed, shape=(2, DIM, 3, 3)):
    return scale * torch.randn(
        shape, generator=torch.Generator().manual_seed(seed))


# --- the LLM codebook source ------------------------------------------------
def test_llm_rows_are_the_codebook_and_ids_map_without_the_file(tmp_path):
    table = hand_table()
    quantizer = llm_quantizer(write_llm(tmp_path / 'llm.safetensors', table),
                              mix_mode='replace')
    with pytest.raises(RuntimeError, match='selected_llm_indices are not'):
        quantizer.llm_token_ids(torch.tensor([0]))
    quantizer.init_weights()
    assert quantizer.selected_llm_indices.tolist() == SELECTED
    assert torch.equal(quantizer.external_codebook, table[SELECTED])

    codes = torch.tensor([[0, 5], [2, 2]])
    assert quantizer.llm_token_ids(codes).tolist() == [[4, 15], [7, 7]]
    assert quantizer.indices_from_llm_token_ids(
        torch.tensor([[15, 4, 12]])).tolist() == [[5, 0, 4]]
    with pytest.raises(ValueError, match='code index 6 is outside'):
        quantizer.llm_token_ids(torch.tensor([1, 6]))
    with pytest.raises(ValueError, match='LLM token id 5 is not one'):
        quantizer.indices_from_llm_token_ids(torch.tensor([4, 5]))
    with pytest.raises(ValueError, match='integers'):
        quantizer.llm_token_ids(torch.tensor([0.0]))

    # the checkpoint: ids and the table's hash, no table
    state = quantizer.state_dict()
    assert 'external_codebook' not in state
    assert 'external_codebook_loaded' not in state
    assert state['selected_llm_indices'].tolist() == SELECTED
    assert bytes(state['external_codebook_sha256'].tolist()).hex() == \
        table_sha256(table[SELECTED])
    # ids <-> codes from the checkpoint alone (the LLM file is gone)
    fresh = llm_quantizer(tmp_path / 'gone.safetensors', mix_mode='replace')
    fresh.load_state_dict(state)
    every = torch.arange(NUM_CODES)
    assert fresh.llm_token_ids(every).tolist() == SELECTED
    assert torch.equal(
        fresh.indices_from_llm_token_ids(fresh.llm_token_ids(every)), every)
    with pytest.raises(FileNotFoundError, match='gone.safetensors'):
        fresh.init_weights()


def test_llm_source_errors_name_the_keys(tmp_path):
    path = write_llm(tmp_path / 'llm.safetensors', hand_table())
    with pytest.raises(ValueError, match=f'13 LLM rows.*only {ELIGIBLE} of '
                       '.*codebook_size'):
        llm_quantizer(path, codebook_size=13).init_weights()
    with pytest.raises(ValueError, match=r'\(16, 4\).*embed_dim=5'):
        llm_quantizer(path, embed_dim=5).init_weights()
    with pytest.raises(KeyError, match='model.embed_tokens.weigth'):
        llm_quantizer(path,
                      external_codebook_key=KEY[:-2] + 'th').init_weights()
    with pytest.raises(ValueError, match='external_num_codes=5 must equal '
                       'codebook_size=6'):
        llm_quantizer(path, external_num_codes=5)
    with pytest.raises(ValueError, match='external_num_codes'):
        VectorQuantizer(6, DIM, external_num_codes=6,
                        external_codebook_path=path)


@pytest.mark.parametrize('options, match', [
    (dict(mix_mode='unicode'), 'needs ema_decay'),
    (dict(mix_mode='unicode', ema_decay=0.9), 'external codebook'),
    (dict(mix_mode='unicode', ema_decay=0.9, use_l2_norm=True,
          use_external_codebook=True), 'use_l2_norm=False'),
    (dict(mix_mode='unicode', ema_decay=0.9, use_external_codebook=True,
          latent_norm_stat='median'), 'latent_norm_stat'),
    (dict(mix_mode='unicode', ema_decay=0.9, use_external_codebook=True,
          latent_norm_cap=0), 'latent_norm_cap'),
    (dict(mix_mode='unicode', ema_decay=0.9, use_external_codebook=True,
          latent_norm_stat='running', latent_norm_decay=1), 'decay'),
    (dict(use_external_codebook=True, latent_norm_stat='batch'),
     "latent_norm_stat='batch' needs mix_mode='unicode'"),
    (dict(use_external_codebook=True, cap_latent_norm=False),
     'cap_latent_norm'),
    (dict(external_codebook_in_checkpoint=False),
     'external_codebook_in_checkpoint needs an external codebook'),
    (dict(external_codebook_key=KEY), 'external_codebook_key needs'),
])
def test_invalid_options_raise(options, match):
    with pytest.raises(ValueError, match=match):
        VectorQuantizer(NUM_CODES, DIM, **options)


# --- mix_mode='unicode' ------------------------------------------------------
def official_codebook(embed_avg, cluster_size, llm, ratio, weight, eps):
    """The official codebook after an EMA update (``EMAVectorQuantizer.
    forward``, ``norm_type='rela_llm'``), written out: Laplace-smoothed EMA
    codes, normalised, at the LLM rows' norms times the latent ratio, mixed
    with the LLM rows times the ratio."""
    n = cluster_size.sum()
    smoothed = (cluster_size + eps) / (n + len(cluster_size) * eps) * n
    normalized = embed_avg / smoothed[:, None]
    normalized = F.normalize(normalized, p=2, dim=-1) * \
        llm.norm(dim=-1)[:, None] * ratio
    return normalized * (1 - weight) + llm * ratio * weight


def official_step(z, state, llm, weight, decay=0.9, eps=1e-5, cap=30.0,
                  beta=0.25):
    """One official training step of the latent-norm control and EMA update
    on ``z`` (B, D, H, W), batch statistic; ``state`` = (embed_avg,
    cluster_size, ratio). The look-up uses the codebook of ``state`` mixed
    with the current ``weight``; returns the indices, the new state, the
    codebook after the update and the commitment loss against it."""
    embed_avg, cluster_size, ratio = state
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    pre = flat.norm(dim=-1).mean()
    if pre >= cap:
        flat = flat / pre * cap
    post = flat.norm(dim=-1).mean() / cap
    scaled = cap * llm.norm(dim=-1).mean()
    codebook = official_codebook(embed_avg, cluster_size, llm, ratio, weight,
                                 eps)
    distance = ((flat / scaled)[:, None] - codebook[None]).pow(2).sum(-1)
    indices = distance.argmin(1)
    onehot = F.one_hot(indices, len(llm)).float()
    cluster_size = cluster_size * decay + (1 - decay) * onehot.sum(0)
    embed_avg = embed_avg * decay + (1 - decay) * onehot.t() @ flat
    codebook = official_codebook(embed_avg, cluster_size, llm, post, weight,
                                 eps)
    loss = beta * ((codebook[indices] * scaled - flat)**2).mean()
    return indices, (embed_avg, cluster_size, post), codebook, loss


def test_unicode_steps_equal_the_official_formulas():
    """Two training steps (a latent above the cap, then one below it, at
    two mix weights) against the official formulas written out."""
    torch.manual_seed(0)
    llm = hand_table(seed=1)[SELECTED]
    quantizer = VectorQuantizer(NUM_CODES, DIM, ema_decay=0.9,
                                use_external_codebook=True,
                                mix_mode='unicode',
                                latent_norm_stat='batch').train()
    quantizer.load_external_codebook(llm)
    state = (quantizer.ema_embed_sum.clone(),
             quantizer.ema_cluster_size.clone(), torch.tensor(1.0))
    for z, weight in ((latent(40, 2), 0.3), (latent(5, 3), 0.6)):
        quantizer.set_mix_weight(weight)
        out = quantizer(z)
        indices, state, codebook, loss = official_step(z, state, llm, weight)
        assert torch.equal(out.indices.flatten(), indices)
        torch.testing.assert_close(quantizer.ema_embed_sum, state[0])
        torch.testing.assert_close(quantizer.ema_cluster_size, state[1])
        torch.testing.assert_close(quantizer.latent_ratio, state[2])
        torch.testing.assert_close(quantizer.code_vectors(), codebook)
        torch.testing.assert_close(out.loss['loss_commitment'], loss)
        assert torch.equal(out.quantized, quantizer.decode(out.indices))
    assert 0.1 < float(state[2]) < 0.5  # the second latent is below the cap
    assert out.stats['latent_ratio'].item() == pytest.approx(
        state[2].item())


def test_lambda_one_codebook_is_r_times_the_llm_rows(tmp_path):
    table = hand_table()
    quantizer = llm_quantizer(write_llm(tmp_path / 'llm.safetensors',
                                        table)).train()
    quantizer.init_weights()
    z = latent(5, 4)  # mean norm ~9 < 30: r ~0.3, not 1
    for weight in (0.0, 0.5, 1.0):
        quantizer.set_mix_weight(weight)
        out = quantizer(z)
        stats = quantizer.mix_stats()
        assert stats['mix_weight'] == weight
        assert (stats['diff_cos'] > 0.05) == (weight < 1)
    ratio = stats['latent_ratio']
    assert 0.1 < ratio < 0.9 and ratio == out.stats['latent_ratio'].item()
    in_use = ratio * table[SELECTED]
    assert torch.equal(quantizer.code_vectors(), in_use)
    assert abs(stats['diff_cos']) < 1e-6
    scale = 30 * table[SELECTED].norm(dim=-1).mean()
    assert stats['lookup_scale'] == pytest.approx(scale.item())
    expected = (in_use[out.indices] * scale).movedim(-1, 1)
    assert torch.equal(out.quantized, expected)
    assert torch.equal(quantizer.decode(out.indices), expected)
    # the EMA statistics kept learning from the data, never set to the mix
    assert not torch.allclose(
        F.normalize(quantizer.ema_embed_sum, dim=-1),
        F.normalize(table[SELECTED], dim=-1), atol=0.1)


def norm_codebook_quantizer(stat):
    """Codes along one direction ``u`` with norms 0.1 ... 2.5 (mean 1, so
    ``s = 30``), at λ = 1 and r = 1: a latent ``a·u`` with a mean norm
    ``n`` is looked up at ``min(n, 30) / 30 · a / n`` times ``u``."""
    norms = torch.tensor([0.1, 0.3, 0.6, 1.0, 1.5, 2.5])
    table = torch.zeros(6, DIM)
    table[:, 0] = norms
    quantizer = VectorQuantizer(6, DIM, ema_decay=0.9,
                                use_external_codebook=True,
                                mix_mode='unicode', latent_norm_stat=stat)
    quantizer.load_external_codebook(table)
    quantizer.set_mix_weight(1.0)
    return quantizer


def along_u(norms):
    """A (1, D, 2, 2) latent along ``u`` with these position norms."""
    z = torch.zeros(1, DIM, 2, 2)
    z[0, 0] = torch.tensor(norms).view(2, 2)
    return z


IMAGE = along_u([18.0, 20.0, 22.0, 20.0])  # mean 20 < 30: not capped alone
LOUD = along_u([400.0, 380.0, 420.0, 400.0])  # capped to 30


@pytest.mark.parametrize('stat, training, alone_ids, image_ids, loud_ids', [
    ('sample', False, 2, 2, 3),
    ('sample', True, 2, 2, 3),
    ('running', False, 3, 3, 5),
    ('batch', False, 2, 0, 4),
    ('batch', True, 2, 0, 4),
])
def test_ids_do_not_depend_on_batch_mates_per_sample(stat, training,
                                                     alone_ids, image_ids,
                                                     loud_ids):
    """Alone, IMAGE's look-ups are 0.6-0.73 (code 2, norm 0.6). Beside LOUD
    they stay so with 'sample' (LOUD is capped alone: 30/30 -> code 3) and
    with the frozen 'running' mean (20, from a training step on IMAGE that
    also set r = 20/30, so the codes are 2/3 as long and IMAGE takes code 3,
    0.67; LOUD is not capped: 400/30 -> code 5). The official 'batch' mean
    norm (210) caps IMAGE by 30/210 to ~0.1 (code 0) and LOUD to ~1.9
    (code 4)."""
    quantizer = norm_codebook_quantizer(stat)
    if stat == 'running':
        quantizer.train()(IMAGE)
    quantizer.train(training)
    alone = copy.deepcopy(quantizer)(IMAGE).indices
    assert (alone == alone_ids).all()
    both = torch.cat([IMAGE, LOUD])
    encoded = quantizer.encode(both)
    batch = quantizer(both).indices
    assert (batch[0] == image_ids).all() and (batch[1] == loud_ids).all()
    assert torch.equal(encoded, batch)


def test_masked_positions_are_left_out_of_the_statistic():
    """A padded sample: padding with a huge norm is masked, so the sample's
    cap, ids and r are those of its real positions alone."""
    quantizer = norm_codebook_quantizer('sample').train()
    padded = torch.cat([IMAGE, 1000 * torch.ones(1, DIM, 2, 2)], dim=-1)
    mask = torch.zeros(1, 2, 4, dtype=torch.bool)
    mask[..., :2] = True
    reference = copy.deepcopy(quantizer)
    out = quantizer(padded, mask)
    expected = reference(IMAGE)
    assert torch.equal(out.indices[..., :2], expected.indices)
    assert torch.equal(quantizer.latent_ratio, reference.latent_ratio)
    torch.testing.assert_close(quantizer.latent_ratio, torch.tensor(20 / 30))


def test_running_statistic_is_trained_then_frozen():
    quantizer = norm_codebook_quantizer('running').train()
    small, large = 0.5 * IMAGE, 3 * IMAGE  # mean norms 10 and 60
    quantizer(small)
    assert quantizer.latent_norm_running.item() == pytest.approx(10)
    quantizer(large)  # the cap used 10 (no cap), then the mean moved
    assert quantizer.latent_norm_running.item() == pytest.approx(
        0.99 * 10 + 0.01 * 60)
    assert quantizer.latent_ratio.item() == pytest.approx(10.5 / 30)
    assert quantizer.mix_stats()['latent_norm_running'] == pytest.approx(
        10.5)
    state = copy.deepcopy(quantizer.state_dict())
    quantizer.eval()(torch.cat([large, LOUD]))
    for key, value in quantizer.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_external_cap_for_residual_containers():
    """cap_latent_norm=False: forward neither caps nor moves r; cap_latent
    (what a container calls once, as the official RQGenerator) does."""
    quantizer = VectorQuantizer(6, DIM, ema_decay=0.9,
                                use_external_codebook=True,
                                mix_mode='unicode', latent_norm_stat='batch',
                                cap_latent_norm=False).train()
    quantizer.load_external_codebook(
        norm_codebook_quantizer('batch').external_codebook)
    quantizer.set_mix_weight(1.0)
    out = quantizer(LOUD)
    assert 'latent_norm' not in out.stats
    assert quantizer.latent_ratio.item() == 1.0
    assert (out.indices == 5).all()  # 400 / 30 -> the largest code, 2.5
    capped = quantizer.cap_latent(torch.cat([0.5 * IMAGE, LOUD]))
    torch.testing.assert_close(capped.norm(dim=1).mean(),
                               torch.tensor(30.0))
    assert quantizer.latent_ratio.item() == pytest.approx(1.0)
    quantizer.cap_latent(0.5 * IMAGE)
    assert quantizer.latent_ratio.item() == pytest.approx(10 / 30)


# --- checkpoints -------------------------------------------------------------
def test_different_table_on_resume_raises_and_same_table_resumes(tmp_path):
    table = hand_table()
    other = table.clone()
    other[SELECTED[2], 0] += 0.01  # same selected rows, one value differs
    path = write_llm(tmp_path / 'llm.safetensors', table)
    other_path = write_llm(tmp_path / 'other.safetensors', other)
    trained = llm_quantizer(path).train()
    trained.init_weights()
    trained.set_mix_weight(0.4)
    for seed in (5, 6):
        trained(latent(50, seed))
    state = copy.deepcopy(trained.state_dict())
    assert {'latent_ratio', 'mix_weight', 'codebook_frozen'} <= set(state)
    hashes = (f'{table_sha256(other[SELECTED])}.*'
              f'{table_sha256(table[SELECTED])}.*external_codebook_path')

    resumed = llm_quantizer(other_path)
    resumed.init_weights()  # a resume: init_weights, then the checkpoint
    with pytest.raises(ValueError, match=hashes):
        resumed.load_state_dict(state)
    loaded = llm_quantizer(other_path)
    loaded.load_state_dict(state)  # inference: the checkpoint, then files
    with pytest.raises(ValueError, match=hashes):
        loaded.init_inference_weights()

    resumed = llm_quantizer(path).train()
    resumed.init_weights()
    resumed.load_state_dict(state)
    z = latent(50, 7)
    expected, out = trained(z), resumed(z)
    assert torch.equal(out.quantized, expected.quantized)
    assert torch.equal(out.loss['loss_commitment'],
                       expected.loss['loss_commitment'])
    # a state dict recorded before any table keeps the loaded records
    resumed.load_state_dict(llm_quantizer(path).state_dict())
    assert resumed.selected_llm_indices.tolist() == SELECTED


def tiny_tokenizer(path, codebook_size):
    backbone = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1,
                    attn_resolutions=(), resolution=16, z_channels=16,
                    num_groups=8)
    torch.manual_seed(0)
    return MODELS.build(dict(
        type='AutoencoderTokenizer',
        encoder=dict(type='ConvEncoder', in_channels=3, **backbone),
        decoder=dict(type='ConvDecoder', out_ch=3, **backbone),
        quantizer=dict(type='VectorQuantizer', codebook_size=codebook_size,
                       embed_dim=8, ema_decay=0.9,
                       external_codebook_path=path,
                       external_codebook_key=KEY,
                       external_codebook_in_checkpoint=False,
                       mix_mode='unicode'),
        reconstruction_loss=dict(type='MSELoss'),
        ema=dict(decay=0.5)))


@pytest.fixture
def single_thread():
    """One intra-op thread for the tokenizer (a shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tokenizer_checkpoint_and_ema_copy_hold_no_table(
        tmp_path, single_thread):
    norms = torch.linspace(0.5, 3.0, 40).tolist()
    table = hand_table(seed=3, norms=norms, dim=8)
    path = write_llm(tmp_path / 'llm.safetensors', table)
    model = tiny_tokenizer(path, codebook_size=16)
    model.init_weights()
    model.quantizer.set_mix_weight(0.5)
    images = [torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(i))
              for i in range(2)]
    data = dict(inputs=images,
                data_samples=[DataSample() for _ in images])
    wrapper = OptimWrapper(torch.optim.Adam(model.parameters(), lr=1e-3))
    model.train_step(data, wrapper)  # the EMA copy follows
    state = model.state_dict()
    assert not [key for key in state if key.endswith('external_codebook')]
    digest = table_sha256(table[model.quantizer.selected_llm_indices])
    for prefix in ('quantizer.', 'ema.quantizer.'):
        assert bytes(state[prefix + 'external_codebook_sha256'].tolist()
                     ).hex() == digest
        assert torch.equal(state[prefix + 'selected_llm_indices'],
                           torch.arange(16) + 8)  # the 16 smallest >= 1

    changed = table.clone()
    changed[10, 0] += 0.01  # the same rows are selected
    other = write_llm(tmp_path / 'other.safetensors', changed)
    resumed = tiny_tokenizer(other, codebook_size=16)
    resumed.init_weights()
    with pytest.raises(ValueError, match='sha256.*external_codebook_path'):
        resumed.load_state_dict(state)
    # inference: the checkpoint, then the table for the model and its EMA
    # (the tokenizer fills the quantizer and its EMA copy)
    loaded = tiny_tokenizer(path, codebook_size=16)
    loaded.load_state_dict(state)
    assert not loaded.ema['quantizer'].external_codebook_loaded
    loaded.init_inference_weights()
    loaded.eval()
    model.eval()
    with torch.no_grad():
        inputs = model.data_preprocessor(data, False)['inputs']
        assert torch.equal(loaded.encode(inputs), model.encode(inputs))
        with loaded.ema_weights(), model.ema_weights():
            assert torch.equal(loaded.encode(inputs), model.encode(inputs))


def test_frozen_codebook_stops_every_update(tmp_path):
    quantizer = llm_quantizer(write_llm(tmp_path / 'llm.safetensors',
                                        hand_table())).train()
    quantizer.init_weights()
    quantizer.set_mix_weight(0.5)
    quantizer(latent(5, 8))
    quantizer.set_codebook_frozen(True)
    assert quantizer.mix_stats()['mix_weight'] == 1.0
    assert quantizer.mix_stats()['codebook_frozen'] == 1.0
    state = copy.deepcopy(quantizer.state_dict())
    z = latent(50, 9).requires_grad_()  # another norm: r would move
    out = quantizer(z)
    for key, value in quantizer.state_dict().items():
        assert torch.equal(value, state[key]), key
    out.loss['loss_commitment'].backward()
    assert z.grad.abs().sum() > 0  # the encoder still learns
    with pytest.raises(ValueError, match='set_codebook_frozen\\(False\\)'):
        quantizer.set_mix_weight(0.5)
    quantizer.set_codebook_frozen(False)
    quantizer(z.detach())
    assert not torch.equal(quantizer.ema_embed_sum, state['ema_embed_sum'])
    assert not torch.equal(quantizer.latent_ratio, state['latent_ratio'])


def test_frozen_replace_codebook_gradient_and_ema():
    """The tail for the older modes: no EMA update, no codebook loss."""
    for ema_decay in (0.9, None):
        quantizer = VectorQuantizer(NUM_CODES, DIM, ema_decay=ema_decay,
                                    use_external_codebook=True).train()
        quantizer.load_external_codebook(hand_table()[SELECTED])
        quantizer.set_codebook_frozen(True)
        assert 'codebook_frozen' not in quantizer.state_dict()
        before = copy.deepcopy(quantizer.state_dict())
        out = quantizer(latent(1, 10))
        assert 'loss_codebook' not in out.loss
        for key, value in quantizer.state_dict().items():
            assert torch.equal(value, before[key]), key
        assert torch.equal(quantizer.code_vectors(), hand_table()[SELECTED])


def test_unicode_needs_the_table():
    quantizer = VectorQuantizer(NUM_CODES, DIM, ema_decay=0.9,
                                use_external_codebook=True,
                                mix_mode='unicode')
    with pytest.raises(RuntimeError, match='external codebook is not loaded'):
        quantizer.encode(latent(1, 11))
    assert quantizer.mix_stats()['diff_cos'] != \
        quantizer.mix_stats()['diff_cos']  # NaN before the table


# --- containers (HQ-VAE / RQ-VAE) --------------------------------------------
def test_containers_load_their_levels_tables(tmp_path):
    """A hierarchical quantizer passes init_weights on to both levels; a
    missing table names its full key."""
    path = write_llm(tmp_path / 'llm.safetensors', hand_table())
    level = dict(type='VectorQuantizer', codebook_size=NUM_CODES,
                 embed_dim=DIM, ema_decay=0.9, external_codebook_path=path,
                 external_codebook_key=KEY, mix_mode='unicode')
    quantizer = QUANTIZERS.build(dict(
        type='HierarchicalQuantizer',
        top_quantizer=dict(level, in_channels=4 * DIM),
        bottom_quantizer=dict(level, in_channels=DIM)))
    quantizer.init_weights()
    assert quantizer.top.external_codebook_loaded
    assert quantizer.bottom.external_codebook_loaded
    missing = QUANTIZERS.build(dict(
        type='HierarchicalQuantizer', shared_codebook=True,
        top_quantizer=dict(level, in_channels=4 * DIM,
                           external_codebook_path=str(tmp_path / 'no'))))
    with pytest.raises(MissingWeightsError,
                       match=r'top\.external_codebook_path'):
        missing.init_weights()


def test_residual_quantizer_caps_the_latent_once(tmp_path):
    """UniCode's RQ-VAE: the latent's norm is capped once before the depths
    (a sub-quantizer that capped itself would re-cap every residual)."""
    path = write_llm(tmp_path / 'llm.safetensors', hand_table())
    rq = QUANTIZERS.build(dict(
        type='ResidualQuantizer', depth=4, shared_codebook=True,
        quantizer=dict(type='VectorQuantizer', codebook_size=NUM_CODES,
                       embed_dim=DIM, ema_decay=0.9,
                       external_codebook_path=path,
                       external_codebook_key=KEY, mix_mode='unicode',
                       cap_latent_norm=False)))
    rq.init_weights()
    rq.eval()
    z = latent(60, 3)  # mean norm far above the cap of 30
    inner = rq.quantizers[0]
    residual, expected = inner.cap_latent(z), []
    for _ in range(4):
        expected.append(inner.encode(residual))
        residual = residual - inner.decode(expected[-1])
    assert torch.equal(rq.encode(z), torch.stack(expected, -1))
    assert torch.equal(rq(z).indices, rq.encode(z))
    uncapped = []
    residual = z
    for _ in range(4):
        uncapped.append(inner.encode(residual))
        residual = residual - inner.decode(uncapped[-1])
    assert not torch.equal(rq.encode(z), torch.stack(uncapped, -1))
