"""Worker of ``tests/test_engine/test_fsdp.py``, started by ``torchrun`` with
2 CPU processes (gloo): several short training runs in one launch, each in
its own work dir under ``OUT``, with each iteration's outputs averaged over
the ranks written to ``OUT/<run>/losses.json``.

    torchrun --nproc_per_node 2 fsdp_worker.py OUT
    python fsdp_worker.py OUT --single   # seg_one: the segmentor's reference

Runs (5 iterations, checkpoints every 3):

* ``tok_fsdp`` / ``tok_ddp``: the tiny TiTok GAN (``tiny_titok_gan.py``)
  sharded / with vistok's gradient-averaging wrapper, adaptive weight and
  LeCam off (they are non-linear in per-rank statistics), the
  discriminator active from the start; 2 x batch 4;
* ``tok_fsdp_ac``: ``tok_fsdp`` with activation checkpointing;
* ``tok_fsdp_accum`` / ``tok_ddp_accum``: 2 ranks x 2 micro-batches of 2
  accumulated per update of both optimizers;
* ``tok_fsdp_resumed``: the FSDP run killed after iteration 4, then
  resumed with ``--resume auto`` (from ``iter_3.dcp``) to 5;
* ``gan_fsdp`` / ``gan_ddp``: the tiny TiTok GAN as configured (adaptive
  weight and LeCam on, discriminator from iteration 3);
* ``seg_fsdp`` / ``seg_ddp``: the tiny EMmamba affinity segmentor (FSDP
  units named in the config: ``EMMambaLayer``); 2 x batch 2;
* ``seg_fsdp_bf16``: the same sharded, computing in bfloat16
  (``param_dtype``, float32 reduction) with activation checkpointing;
* ``tok_fsdp_test``: ``tools/test.py``'s path on the FSDP config, 2 ranks:
  ``iter_5.dcp`` of ``tok_fsdp`` loaded (``load_from``) and tested; the
  metrics are written to ``OUT/tok_fsdp_test/metrics.json``;
* ``var_fsdp`` (no Runner): a tiny VAR generator, whose own position
  embeddings make FSDP shard the generator itself last (its forward is one
  call), 3 Adam steps on a fixed batch of 8 token maps split over the
  ranks; its full weights are written to ``OUT/var_fsdp.pth``;
* ``seg_one``, ``var_one`` (``--single``): the segmentor in one process
  with batch 4 and the tiny VAR with the whole batch, started like the
  torchrun processes (``OMP_NUM_THREADS=1``): oneDNN picks its convolution
  kernels by the thread count a process starts with, so references are
  computed in such a process.
"""
import json
import os.path as osp
import sys

import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.hooks import Hook

from vistok.apis import apply_cli_options, build_runner

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOKENIZER = osp.join(ROOT, 'tests/data/configs/tiny_titok_gan.py')
SEGMENTOR = osp.join(
    ROOT, 'projects/TokenUnify/configs/'
    'emmamba-seg_affinity-3_emmamba-tiny_1xb4-300_synthetic-16x32x32.py')
COMMON = {'train_cfg.max_iters': 5, 'train_cfg.val_interval': 100,
          'default_hooks.checkpoint.interval': 3}
#: options under which 2 ranks x batch b equal 1 process x batch 2b: the
#: adaptive weight and LeCam are non-linear in per-rank statistics; with
#: Adam's eps 1e-8 the discriminator's near-zero gradients turn float noise
#: into lr-sized sign flips (seen: 2.7e-4 after 5 steps, DDP and FSDP alike)
EXACT_GAN = {'model.adversarial_loss.adaptive_weight': False,
             'model.adversarial_loss.lecam_weight': 0.0,
             'model.adversarial_loss.start_iter': 0,
             'optim_wrapper.discriminator.optimizer.eps': 1e-3}
FSDP = {'model_wrapper_cfg': dict(type='FullyShardWrapper')}
#: the segmentor: its 3-D convolutions round differently at batch 2 and 4
#: (1.5e-8 after one step) and its training amplifies that about tenfold
#: per step (2.8e-5 after five at lr 2e-4, with Adam or SGD, DDP and FSDP
#: alike); at lr 5e-5 five steps stay within 1e-5
EXACT_SEG = {'optim_wrapper.optimizer.eps': 1e-3,
             'optim_wrapper.optimizer.lr': 5e-5}
SEG_FSDP = {'model_wrapper_cfg': dict(type='FullyShardWrapper',
                                      block_types=['EMMambaLayer'])}
#: 2 micro-batches of 2 per rank and update, both optimizers
ACCUMULATE = {'train_dataloader.batch_size': 2,
              'optim_wrapper.generator.accumulative_counts': 2,
              'optim_wrapper.discriminator.accumulative_counts': 2}
RUNS = {
    'tok_fsdp': (TOKENIZER, dict(EXACT_GAN, **FSDP)),
    'tok_fsdp_ac': (TOKENIZER, dict(EXACT_GAN, model_wrapper_cfg=dict(
        type='FullyShardWrapper', activation_checkpointing=True))),
    'tok_fsdp_accum': (TOKENIZER, dict(EXACT_GAN, **FSDP, **ACCUMULATE)),
    'tok_ddp_accum': (TOKENIZER, dict(EXACT_GAN, **ACCUMULATE)),
    'tok_ddp': (TOKENIZER, EXACT_GAN),
    'gan_fsdp': (TOKENIZER, FSDP),
    'gan_ddp': (TOKENIZER, {}),
    'seg_fsdp': (SEGMENTOR, dict(SEG_FSDP, **EXACT_SEG,
                                 **{'train_dataloader.batch_size': 2})),
    'seg_ddp': (SEGMENTOR, dict(EXACT_SEG,
                                **{'train_dataloader.batch_size': 2})),
    'seg_fsdp_bf16': (SEGMENTOR, dict(
        EXACT_SEG, model_wrapper_cfg=dict(
            type='FullyShardWrapper', block_types=['EMMambaLayer'],
            param_dtype='bfloat16', reduce_dtype='float32',
            activation_checkpointing=True),
        **{'train_dataloader.batch_size': 2})),
}


class RecordOutputs(Hook):
    """Each iteration's scalar outputs, averaged over the ranks; raises
    ``KeyboardInterrupt`` after iteration ``crash_after``."""
    priority = 'LOWEST'

    def __init__(self, crash_after=None):
        self.outputs = {}
        self.crash_after = crash_after

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        names = sorted(outputs)
        values = torch.tensor([float(outputs[k]) for k in names],
                              dtype=torch.float64)
        if torch_dist.is_initialized():
            torch_dist.all_reduce(values)
            values /= torch_dist.get_world_size()
        self.outputs[str(runner.iter + 1)] = dict(zip(names,
                                                      values.tolist()))
        if self.crash_after == runner.iter + 1:
            raise KeyboardInterrupt('simulated kill')


def train(out, name, config, options, crash_after=None, resume=None,
          launcher='pytorch'):
    cfg = Config.fromfile(config)
    apply_cli_options(cfg, work_dir=osp.join(out, name), resume=resume,
                      launcher=launcher,
                      cfg_options=dict(COMMON, **options))
    cfg.experiment_name = name
    runner = build_runner(cfg)
    recorder = RecordOutputs(crash_after)
    runner.register_hook(recorder)
    try:
        runner.train()
    except KeyboardInterrupt:
        pass
    if not torch_dist.is_initialized() or torch_dist.get_rank() == 0:
        path = osp.join(out, name, 'losses.json')
        previous = {}
        if osp.exists(path):
            with open(path) as f:
                previous = json.load(f)
        with open(path, 'w') as f:
            json.dump(dict(previous, **recorder.outputs), f)
    if torch_dist.is_initialized():
        torch_dist.barrier()


#: the tiny VAR: scales (1, 2, 3), 16 codes, 2 blocks of width 32
VAR = dict(type='VARGenerator', patch_nums=(1, 2, 3), num_classes=4,
           depth=2, embed_dim=32, num_heads=2, class_dropout_prob=0.0,
           init_adaln_gamma=0.5, init_head=1.0,
           quantizer=dict(type='MultiScaleResidualQuantizer',
                          scales=(1, 2, 3), num_phi=2,
                          quantizer=dict(type='VectorQuantizer',
                                         codebook_size=16, embed_dim=4,
                                         use_l2_norm=True)))


def train_var(out, name, steps=3, batch=8):
    """``var_fsdp`` (in a process group) or ``var_one`` (without): see the
    module docstring."""
    from mmengine.registry import init_default_scope

    from vistok.engine.fsdp import FullyShardWrapper
    from vistok.registry import MODELS
    init_default_scope('vistok')
    torch.manual_seed(0)
    model = MODELS.build(VAR)
    generator = torch.Generator().manual_seed(1)
    tokens = [torch.randint(0, 16, (batch, s, s), generator=generator)
              for s in (1, 2, 3)]
    labels = torch.randint(0, 4, (batch, ), generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    if torch_dist.is_initialized():
        wrapper = FullyShardWrapper(model)
        assert wrapper.plan.root  # the case this run is for
        wrapper.shard(init_weights=False, optimizers=[optimizer])
        rank, size = torch_dist.get_rank(), torch_dist.get_world_size()
        part = slice(rank * batch // size, (rank + 1) * batch // size)
        tokens, labels = [t[part] for t in tokens], labels[part]
    for _ in range(steps):
        loss = model(tokens, labels, mode='loss')['loss_ce']
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = {k: v.full_tensor() if hasattr(v, 'full_tensor') else v
             for k, v in model.state_dict().items()}
    if not torch_dist.is_initialized() or torch_dist.get_rank() == 0:
        torch.save(state, osp.join(out, f'{name}.pth'))


def test(out, name, config, options, checkpoint, launcher='pytorch'):
    """Test ``checkpoint`` as ``tools/test.py`` does; the metrics go to
    ``OUT/<name>/metrics.json``."""
    cfg = Config.fromfile(config)
    apply_cli_options(cfg, work_dir=osp.join(out, name), launcher=launcher,
                      load_from=checkpoint,
                      cfg_options=dict(COMMON, **options))
    metrics = build_runner(cfg).test()
    if not torch_dist.is_initialized() or torch_dist.get_rank() == 0:
        with open(osp.join(out, name, 'metrics.json'), 'w') as f:
            json.dump({k: float(v) for k, v in metrics.items()}, f)


def main(out):
    for name, (config, options) in RUNS.items():
        train(out, name, config, options)
    config, options = RUNS['tok_fsdp']
    train(out, 'tok_fsdp_resumed', config, options, crash_after=4)
    train(out, 'tok_fsdp_resumed', config, options, resume='auto')
    test(out, 'tok_fsdp_test', config, options,
         osp.join(out, 'tok_fsdp', 'iter_5.dcp'))
    train_var(out, 'var_fsdp')


if __name__ == '__main__':
    if sys.argv[2:] == ['--single']:
        train(sys.argv[1], 'seg_one', SEGMENTOR,
              dict(EXACT_SEG, **{'train_dataloader.batch_size': 4}),
              launcher='none')
        train_var(sys.argv[1], 'var_one')
    else:
        main(sys.argv[1])
