"""Cost of bit-identical CPU training: the quick-start config with
PyTorch's deterministic algorithms on and off.

    python bench/determinism.py [--iters 40] [--warmup 5] [--rounds 4]
                                [--threads 2] [--config CONFIG]

Trains ``--config`` (default: the config of ``tools/run_demo.sh``) for
``--iters`` iterations, seed 0, one subprocess per run, ``--rounds`` times
three runs in alternating order (the machine may be shared: load drifts
hit every mode alike): ``on`` / ``off`` (``randomness.deterministic=True``
/ ``False``) report the median wall time of their iterations after
``--warmup`` and the sha256 of their final weights; ``paired`` switches
the flag at every iteration (even: on, odd: off), so the two modes are
timed under the same load, iteration by iteration.

Prints one JSON document: for ``on`` / ``off`` the per-run medians, their
median and the number of distinct final weights over the runs (1 =
bit-identical); ``paired``: the median iteration time per mode over all
paired runs and ``slowdown`` = median(on) / median(off) - 1, the cost
estimate (``run_slowdown``: the same from the separate runs, noisier).
The CPU default of ``randomness.deterministic=None`` (deterministic
algorithms on CPU-only runs) was chosen because this is below 0.05
(README, "Reproducibility").
What differs between the modes on CPU: ``index_put_(accumulate=True)``
(the backward of ``codebook[indices]``) adds rows with parallel atomic adds
when off, serially when on. Run by hand on a quiet machine; never in CI.
"""
import argparse
import hashlib
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

DEMO_CONFIG = osp.join(ROOT, 'configs', 'vqvae',
                       'vqvae_vq-512_conv-f4_1xb8-2k_shapes-64.py')
MODES = {'on': True, 'off': False, 'paired': None}


def weights_sha256(model) -> str:
    """sha256 over the model's state dict (names and raw bytes, in order)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_child(config: str, mode: str, iters: int, warmup: int,
              threads: int) -> dict:
    """One training run in this process; its iteration times and digest."""
    import torch
    from mmengine.config import Config
    from mmengine.hooks import Hook

    from vistok.apis import apply_cli_options, build_runner

    torch.set_num_threads(threads)

    class IterTimes(Hook):
        """Wall time of each iteration after ``warmup``, by the state of
        the flag; in ``paired`` mode the flag alternates."""
        priority = 'VERY_HIGH'

        def __init__(self):
            self.times = {True: [], False: []}
            self.start = None

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            if mode == 'paired':
                torch.use_deterministic_algorithms(runner.iter % 2 == 0)
            self.start = time.perf_counter()

        def after_train_iter(self, runner, batch_idx, data_batch=None,
                             outputs=None):
            elapsed = time.perf_counter() - self.start
            if runner.iter >= warmup:
                enabled = torch.are_deterministic_algorithms_enabled()
                self.times[enabled].append(elapsed)

    never = 10**9
    cfg = Config.fromfile(config)
    with tempfile.TemporaryDirectory() as work_dir:
        options = {'train_cfg.max_iters': iters,
                   'train_cfg.val_interval': never,
                   'default_hooks.checkpoint.interval': never,
                   'default_hooks.logger.interval': never}
        apply_cli_options(cfg, work_dir=work_dir, seed=0,
                          deterministic=bool(MODES[mode]),
                          cfg_options=options)
        cfg.log_level = 'WARNING'
        runner = build_runner(cfg)
        timer = IterTimes()
        runner.register_hook(timer)
        runner.train()
    return dict(mode=mode, times={'on': timer.times[True],
                                  'off': timer.times[False]},
                weights_sha256=weights_sha256(runner.model))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default=DEMO_CONFIG)
    parser.add_argument('--iters', type=int, default=40)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--rounds', type=int, default=4)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--child', choices=list(MODES),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup >= args.iters:
        parser.error(f'--warmup ({args.warmup}) must be below --iters '
                     f'({args.iters})')
    if args.child:
        print(json.dumps(run_child(args.config, args.child, args.iters,
                                   args.warmup, args.threads)))
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               HF_HUB_OFFLINE='1')
    runs = {mode: [] for mode in MODES}
    for round_ in range(args.rounds):
        # rotate the order, so no mode always runs first or last
        shift = round_ % len(MODES)
        order = list(MODES)[shift:] + list(MODES)[:shift]
        for mode in order:
            proc = subprocess.run(
                [sys.executable, osp.abspath(__file__), '--child', mode,
                 '--config', args.config, '--iters', str(args.iters),
                 '--warmup', str(args.warmup), '--threads',
                 str(args.threads)],
                env=env, capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    import torch
    result = dict(
        torch=torch.__version__, config=osp.relpath(args.config, ROOT),
        iters=args.iters, warmup=args.warmup, rounds=args.rounds,
        threads=args.threads, cpu_count=os.cpu_count(),
        load_average=os.getloadavg())
    for mode in ('on', 'off'):
        medians = [statistics.median(r['times'][mode]) for r in runs[mode]]
        assert all(not r['times'][other] for r in runs[mode]
                   for other in ('on', 'off') if other != mode)
        result[mode] = dict(
            median_iter_s=statistics.median(medians),
            per_run_median_iter_s=medians,
            distinct_final_weights=len(
                {r['weights_sha256'] for r in runs[mode]}))
    result['run_slowdown'] = (result['on']['median_iter_s']
                              / result['off']['median_iter_s'] - 1)
    paired = {mode: statistics.median(
        [t for r in runs['paired'] for t in r['times'][mode]])
        for mode in ('on', 'off')}
    result['paired'] = dict(
        median_iter_s=paired,
        iterations_per_mode=len(
            [t for r in runs['paired'] for t in r['times']['on']]),
        slowdown=paired['on'] / paired['off'] - 1)
    print(json.dumps(result, indent=1))


if __name__ == '__main__':
    main()
