"""FSDP (``fully_shard``) in the Runner and sharded checkpoints, on CPU with
gloo: one ``torchrun`` launch of ``fsdp_worker.py`` (2 processes, several
runs) against single-process references computed here."""
import json
import os
import os.path as osp
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp
from mmengine.config import Config
from mmengine.registry import init_default_scope
from safetensors.torch import load_file

from _helpers import REPO_ROOT, free_port, subprocess_env, torch_threads
from vistok.apis import apply_cli_options, build_runner
from vistok.engine.fsdp import FullyShardWrapper, plan_fully_shard
from vistok.engine.runner import candidate_checkpoints
from vistok.registry import MODELS
from vistok.utils.checkpoint import CheckpointLoadError, load_checkpoint_file
from vistok.utils.dcp import (
    check_complete,
    consolidate,
    merge_tensors,
    read_metadata,
    split_tensors,
)
from vistok.utils.dist import clip_grad_norm_

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import fsdp_worker as worker  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope='module')
def launched(tmp_path_factory):
    """The worker's runs (2 processes; see fsdp_worker.py)."""
    out = tmp_path_factory.mktemp('fsdp')
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run',
         '--nproc_per_node', '2', '--master_port', str(free_port()),
         osp.join(REPO_ROOT, 'tests/test_engine/fsdp_worker.py'), str(out)],
        env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    proc = subprocess.run(
        [sys.executable, osp.join(REPO_ROOT, 'tests/test_engine/'
                                  'fsdp_worker.py'), str(out), '--single'],
        env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def single(work_dir, config, options, resume=None):
    """One process with the global batch; returns the runner and each
    iteration's outputs."""
    cfg = Config.fromfile(config)
    apply_cli_options(cfg, work_dir=str(work_dir), resume=resume,
                      cfg_options=dict(worker.COMMON, **options))
    runner = build_runner(cfg)
    recorder = Recorder()
    runner.register_hook(recorder)
    with torch_threads(1):  # the thread count of the torchrun processes
        runner.train()
    return runner, recorder.outputs


class Recorder(worker.RecordOutputs):

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.outputs[str(runner.iter + 1)] = {
            k: float(v.detach()) for k, v in outputs.items()}


def losses(run_dir):
    with open(osp.join(run_dir, 'losses.json')) as f:
        return json.load(f)


def assert_same_losses(got, expected, keys):
    assert sorted(got) == sorted(expected)
    for it in expected:
        for key in set(keys) & set(expected[it]):
            assert got[it][key] == pytest.approx(expected[it][key],
                                                 rel=1e-5, abs=1e-6), \
                (it, key)


def assert_same_weights(got, expected):
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, **TOL,
                                   msg=lambda m, key=key: f'{key}: {m}')


@pytest.fixture(scope='module')
def tokenizer_one(tmp_path_factory):
    return single(tmp_path_factory.mktemp('tok_one'), worker.TOKENIZER,
                  dict(worker.EXACT_GAN,
                       **{'train_dataloader.batch_size': 8}))


@pytest.mark.parametrize('kind', ['tok', 'seg'])
def test_fsdp_two_ranks_match_one_process_and_ddp(launched, kind,
                                                  tokenizer_one):
    """2 ranks x batch b under FSDP = 1 process x batch 2b = DDP (vistok's
    gradient averaging): the transformer tokenizer with discriminator, EMA
    copy, replicated quantizer and clipped generator gradients, and the
    tiny EMmamba segmentor; losses and weights after 5 steps within
    1e-5."""
    if kind == 'tok':
        runner, outputs = tokenizer_one
        keys = ['loss', 'disc_loss_total', 'loss_gan']
        one = runner.model.state_dict()
    else:  # computed by the worker (see its docstring)
        outputs = losses(launched / 'seg_one')
        keys = ['loss']
        one = load_checkpoint_file(launched / 'seg_one' / 'iter_5.pth')[
            'state_dict']
    fsdp_dir = launched / f'{kind}_fsdp'
    sharded = consolidate(fsdp_dir / 'iter_5.dcp')
    assert_same_weights(sharded, one)
    ddp = load_checkpoint_file(launched / f'{kind}_ddp' / 'iter_5.pth')
    assert_same_weights(ddp['state_dict'], one)
    assert_same_losses(losses(fsdp_dir), outputs, keys)
    assert_same_losses(losses(launched / f'{kind}_ddp'), outputs, keys)
    # really sharded: every rank wrote a file, block weights in 2 chunks
    metadata = read_metadata(fsdp_dir / 'iter_5.dcp')
    files = {info.relative_path
             for info in metadata.storage_data.values()}
    assert len(files) == 2
    block = ('model.encoder.blocks.0.attn.qkv.weight' if kind == 'tok' else
             'model.backbone.encoder.stages.0.0.mamba.in_proj.weight')
    assert len(metadata.state_dict_metadata[block].chunks) == 2, block


def test_var_sharded_with_its_own_parameters_matches_one_process(launched):
    """A generator holding parameters itself (VAR's position embeddings) is
    sharded last as a whole; 3 steps on 2 x 4 token maps equal 1 x 8."""
    two = torch.load(launched / 'var_fsdp.pth')
    one = torch.load(launched / 'var_one.pth')
    assert_same_weights(two, one)
    assert 'pos_start' in one


def test_gan_with_adaptive_weight_fsdp_equals_ddp(launched):
    """With the adaptive GAN weight (gradients at the last layer, read
    outside its unit's forward) and LeCam, FSDP reproduces the DDP run."""
    fsdp_dir, ddp_dir = launched / 'gan_fsdp', launched / 'gan_ddp'
    ddp = load_checkpoint_file(ddp_dir / 'iter_5.pth')['state_dict']
    assert_same_weights(consolidate(fsdp_dir / 'iter_5.dcp'), ddp)
    assert_same_losses(losses(fsdp_dir), losses(ddp_dir),
                       ['loss', 'disc_loss_total', 'loss_gan'])
    assert losses(ddp_dir)['5']['loss_gan'] != 0  # the GAN trained


def test_activation_checkpointing_recomputes_the_same_step(launched):
    """Recomputing each block in the backward pass changes no result."""
    assert_same_weights(consolidate(launched / 'tok_fsdp_ac' / 'iter_5.dcp'),
                        consolidate(launched / 'tok_fsdp' / 'iter_5.dcp'))


def test_gradient_accumulation_under_fsdp_equals_ddp(launched):
    """2 ranks x 2 accumulated micro-batches of 2, both optimizers with
    clipping: FSDP's reduce-scatter per micro-batch equals vistok's
    all-reduce at the window's end."""
    fsdp_dir, ddp_dir = launched / 'tok_fsdp_accum', launched / 'tok_ddp_accum'
    ddp = load_checkpoint_file(ddp_dir / 'iter_5.pth')['state_dict']
    assert_same_weights(consolidate(fsdp_dir / 'iter_5.dcp'), ddp)
    assert_same_losses(losses(fsdp_dir), losses(ddp_dir),
                       ['loss', 'disc_loss_total'])


def test_bf16_compute_keeps_float32_shards_and_trains(launched):
    """param_dtype='bfloat16': the sharded (checkpointed) weights stay
    float32 and the losses follow the float32 run to bf16 precision."""
    metadata = read_metadata(launched / 'seg_fsdp_bf16' / 'iter_5.dcp')
    dtypes = {entry.properties.dtype
              for key, entry in metadata.state_dict_metadata.items()
              if key.startswith('model.') and 'weight' in key}
    assert dtypes == {torch.float32}
    bf16, fp32 = (losses(launched / name)
                  for name in ('seg_fsdp_bf16', 'seg_fsdp'))
    for it in fp32:
        assert bf16[it]['loss'] == pytest.approx(fp32[it]['loss'],
                                                 rel=2e-2), it
    assert bf16['5']['loss'] != fp32['5']['loss']  # really in bfloat16


def test_kill_and_resume_under_fsdp_is_bit_identical(launched):
    """Killed after iteration 4, resumed with --resume auto from
    iter_3.dcp on 2 ranks: every tensor of iter_5.dcp (model, EMA,
    optimizers) equals the uninterrupted run's bit for bit."""
    resumed = launched / 'tok_fsdp_resumed'
    full = consolidate(launched / 'tok_fsdp' / 'iter_5.dcp', prefix='')
    again = consolidate(resumed / 'iter_5.dcp', prefix='')
    assert set(full) == set(again)
    assert any(k.startswith('optimizer.discriminator.state.') for k in full)
    for key, value in full.items():
        assert torch.equal(again[key], value), key
    assert losses(resumed)['5'] == losses(launched / 'tok_fsdp')['5']
    logs = [open(p).read() for p in resumed.glob('*/*.log')]
    assert any('Auto-resumed from' in log and 'iter_3.dcp' in log
               for log in logs)


def test_test_tool_path_on_two_ranks_loads_a_sharded_checkpoint(launched,
                                                                tmp_path):
    """tools/test.py's path (load_from, test) with the FSDP config on 2
    ranks gives the metrics one process gives for the same iter_5.dcp."""
    with open(launched / 'tok_fsdp_test' / 'metrics.json') as f:
        two = json.load(f)
    worker.test(str(tmp_path), 'one', worker.TOKENIZER, worker.EXACT_GAN,
                str(launched / 'tok_fsdp' / 'iter_5.dcp'), launcher='none')
    with open(tmp_path / 'one' / 'metrics.json') as f:
        one = json.load(f)
    assert sorted(two) == sorted(one) and 'psnr' in one
    for key, value in one.items():
        assert two[key] == pytest.approx(value, rel=1e-6), key


def copy_run(source, target, keep):
    """A copy of an FSDP run's work dir with only the checkpoints ``keep``
    (its ``last_checkpoint`` naming the last of them)."""
    shutil.copytree(source, target)
    for name in os.listdir(target):
        if name.endswith('.dcp') and name not in keep:
            shutil.rmtree(target / name)
    with open(target / 'last_checkpoint', 'w') as f:
        f.write(str(target / keep[-1]))
    return target


def test_resume_two_rank_checkpoint_on_one_process(launched, tmp_path,
                                                   tokenizer_one):
    """The 2-rank iter_3.dcp resumed by one process (re-sharded to whole
    tensors, the FSDP config training unwrapped) continues like the
    single-process run."""
    work_dir = copy_run(launched / 'tok_fsdp', tmp_path / 'one',
                        ('iter_3.dcp', ))
    runner, outputs = single(
        work_dir, worker.TOKENIZER,
        dict(worker.EXACT_GAN, **worker.FSDP,
             **{'train_dataloader.batch_size': 8}), resume='auto')
    assert not isinstance(runner.model, FullyShardWrapper)
    assert sorted(outputs) == ['4', '5']
    assert_same_weights(runner.model.state_dict(),
                        tokenizer_one[0].model.state_dict())


def test_consolidated_export_loads_strictly(launched, tmp_path):
    """export_safetensors.py turns a DCP directory into one file that loads
    strictly into the unsharded model (raw and EMA weights)."""
    checkpoint = launched / 'gan_fsdp' / 'iter_5.dcp'
    full = consolidate(checkpoint)
    cfg = Config.fromfile(worker.TOKENIZER)
    init_default_scope('vistok')
    for ema in (False, True):
        out = tmp_path / f'ema{ema}.safetensors'
        subprocess.run(
            [sys.executable, osp.join(
                REPO_ROOT, 'tools/model_converters/export_safetensors.py'),
             str(checkpoint), str(out)] + (['--ema'] if ema else []),
            env=subprocess_env(), check=True, capture_output=True)
        weights = load_file(out)
        model = MODELS.build(cfg.model)
        model.load_state_dict(weights, strict=False)
        expected = {k: v for k, v in model.state_dict().items()
                    if not k.startswith('ema.')}
        assert set(weights) == set(expected)
        source = 'ema.' if ema else ''
        for key, value in weights.items():
            if source + key in full:
                assert torch.equal(value, full[source + key]), key
    assert not torch.equal(load_file(tmp_path / 'emaTrue.safetensors')[
        'decoder.ln_post.weight'], full['decoder.ln_post.weight'])


def test_partial_checkpoint_refused_and_resume_falls_back(launched,
                                                          tmp_path):
    """A truncated shard file or a directory without .metadata is refused
    with an error naming it; --resume auto then takes the previous complete
    checkpoint; unfinished .partial directories are never candidates."""
    work_dir = copy_run(launched / 'tok_fsdp', tmp_path / 'run',
                        ('iter_3.dcp', 'iter_5.dcp'))
    newest = work_dir / 'iter_5.dcp'
    shard = newest / '__1_0.distcp'
    with open(shard, 'r+b') as f:
        f.truncate(os.path.getsize(shard) // 2)
    with pytest.raises(CheckpointLoadError, match='__1_0.distcp'):
        check_complete(newest)
    broken = tmp_path / 'no_metadata.dcp'
    shutil.copytree(launched / 'tok_fsdp' / 'iter_3.dcp', broken)
    os.remove(broken / '.metadata')
    with pytest.raises(CheckpointLoadError, match='no .metadata'):
        check_complete(broken)
    os.makedirs(work_dir / 'iter_6.dcp.partial')
    assert all(not c.endswith('.partial')
               for c in candidate_checkpoints(work_dir))

    runner, outputs = single(
        work_dir, worker.TOKENIZER,
        dict(worker.EXACT_GAN, **{'train_dataloader.batch_size': 8}),
        resume='auto')
    assert sorted(outputs) == ['4', '5']  # resumed from iter_3.dcp
    log = open(next(work_dir.glob(f'{runner.timestamp}/*.log'))).read()
    assert 'skipping' in log and 'iter_5.dcp' in log


class Payload:
    """Pickles as a call that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker, ))


def test_malicious_metadata_is_refused_without_running_it(launched,
                                                          tmp_path):
    checkpoint = tmp_path / 'iter_3.dcp'
    shutil.copytree(launched / 'tok_fsdp' / 'iter_3.dcp', checkpoint)
    marker = tmp_path / 'pwned'
    with open(checkpoint / '.metadata', 'wb') as f:
        pickle.dump(Payload(marker), f)
    with pytest.raises(CheckpointLoadError, match='os.makedirs|posix'):
        check_complete(checkpoint)
    with pytest.raises(CheckpointLoadError):
        consolidate(checkpoint)
    assert not marker.exists()


def test_non_tensor_entry_is_refused_without_running_it(tmp_path):
    """DCP stores non-tensor values pickled and stock DCP unpickles them
    with weights_only=False; vistok refuses such a checkpoint."""
    marker = tmp_path / 'pwned'
    checkpoint = tmp_path / 'evil.dcp'
    dcp.save({'model.w': torch.ones(3), 'model.evil': Payload(marker)},
             checkpoint_id=str(checkpoint))
    assert not marker.exists()
    with pytest.raises(CheckpointLoadError, match="'model.evil'"):
        consolidate(checkpoint)
    assert not marker.exists()


def test_split_and_merge_tensors_round_trip():
    tree = {'state': {'a.b': {'exp_avg': torch.ones(2), 'step': 3}},
            'param_groups': [{'lr': 0.1, 'betas': (0.9, 0.99),
                              'params': ['a.b']}]}
    skeleton, tensors = split_tensors(tree, 'optimizer.generator')
    assert list(tensors) == ['optimizer.generator.state.a.b.exp_avg']
    assert skeleton['state']['a.b']['step'] == 3
    merged = merge_tensors(skeleton, tensors, 'optimizer.generator')
    assert merged['state']['a.b']['exp_avg'] is tensors[
        'optimizer.generator.state.a.b.exp_avg']
    assert merged['param_groups'] == tree['param_groups']


@pytest.mark.parametrize('norm_type', [2.0, 1.0, float('inf')])
def test_clip_grad_norm_equals_torch_without_shards(norm_type):
    grads = [torch.randn(4, 3), torch.randn(5)]
    ours = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    ref = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, q, g in zip(ours, ref, grads):
        p.grad, q.grad = g.clone(), g.clone()
    total = clip_grad_norm_(ours, 0.5, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(ref, 0.5, norm_type)
    torch.testing.assert_close(total, expected)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.grad, q.grad)


def test_plan_of_the_tiny_transformer_gan():
    init_default_scope('vistok')
    model = MODELS.build(Config.fromfile(worker.TOKENIZER).model)
    plan = plan_fully_shard(model)
    assert plan.blocks == ['encoder.blocks.1', 'encoder.blocks.0',
                           'decoder.blocks.1', 'decoder.blocks.0']
    assert plan.parts == ['encoder', 'decoder', 'head', 'discriminator']
    assert plan.ema_parts == ['ema.encoder', 'ema.decoder', 'ema.head']
    assert plan.replicated == ['quantizer']
    assert plan.keep_gathered == ['head']  # holds model.last_layer
    with pytest.raises(ValueError, match="'Blokc'"):
        plan_fully_shard(model, block_types=['Blokc'])
    with pytest.raises(RuntimeError, match='dist_train.sh'):
        FullyShardWrapper(model)
    with pytest.raises(ValueError, match='offload_params.*no GPU'):
        FullyShardWrapper(model, offload_params=True)
    with pytest.raises(ValueError, match='param_dtype must be one of'):
        FullyShardWrapper(model, param_dtype='bf16')
