"""Evaluation overheads of vistok's metrics against direct library calls.

    python bench/metrics.py [--benches fid engine] [--num-images 512]
                            [--size 64] [--engine-iters 100]

Prints one JSON document. ``fid``: the whole ``FrechetInceptionDistance``
metric (``process`` over batches of float images + ``compute_metrics``,
FID only) against one ``torch_fidelity.calculate_metrics(fid=True,
cache=False)`` call on the same images (uint8), both with the same small
random conv network (``RandomConvFeatures``, registered in torch-fidelity as
a custom extractor), so the time is the metric's own bookkeeping plus the
shared extraction; ``overhead`` = metric / torch-fidelity (target <= 1.1).
``engine``: the CPU VQGAN demo's G/D training step through the Runner vs a
bare PyTorch loop doing the same math (target overhead <= 1.1).
Run by hand on a quiet machine; never in CI.
"""
import argparse
import json
import os.path as osp
import statistics
import sys
import tempfile
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

TORCH_FIDELITY_NAME = 'vistok-bench-random-conv'


class _Uint8Images(Dataset):
    """A stack of uint8 ``(3, H, W)`` images as a torch-fidelity input."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


def _median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_fid_overhead(args) -> dict:
    """FID metric (streaming + compute) vs one torch-fidelity call."""
    import torch_fidelity

    from vistok.evaluation.feature_extractors import torch_fidelity_extractor
    from vistok.evaluation.metrics.fid import FrechetInceptionDistance

    extractor = dict(type='RandomConvFeatures', feature_dim=args.feature_dim,
                     num_classes=10, input_size=args.size)
    if TORCH_FIDELITY_NAME not in \
            torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(
            TORCH_FIDELITY_NAME, torch_fidelity_extractor(extractor))
    generator = torch.Generator().manual_seed(0)
    shape = (args.num_images, 3, args.size, args.size)
    gt = torch.rand(shape, generator=generator) * 255
    pred = (gt + 20 * torch.randn(shape, generator=generator)).clamp(0, 255)
    samples = [dict(pred_img=p, gt_img=g) for p, g in zip(pred, gt)]
    result = {}

    def run_metric():
        metric = FrechetInceptionDistance(feature_extractor=extractor,
                                          cache_dir=cache_dir)
        for i in range(0, len(samples), args.batch_size):
            metric.process(None, samples[i:i + args.batch_size])
        result['fid_metric'] = metric.compute_metrics(metric.results)['fid']

    def run_torch_fidelity():
        out = torch_fidelity.calculate_metrics(
            input1=_Uint8Images(pred.round().to(torch.uint8)),
            input2=_Uint8Images(gt.round().to(torch.uint8)), fid=True,
            feature_extractor=TORCH_FIDELITY_NAME, cache=False, cuda=False,
            verbose=False, save_cpu_ram=True, batch_size=args.batch_size)
        result['fid_torch_fidelity'] = out['frechet_inception_distance']

    with tempfile.TemporaryDirectory() as cache_dir:
        metric_s = _median_seconds(run_metric, args.repeats)
        torch_fidelity_s = _median_seconds(run_torch_fidelity, args.repeats)
    return dict(num_images=args.num_images, size=args.size,
                batch_size=args.batch_size, feature_dim=args.feature_dim,
                metric_seconds=metric_s,
                torch_fidelity_seconds=torch_fidelity_s,
                overhead=metric_s / torch_fidelity_s, **result)


ENGINE_CONFIG = 'configs/vqgan/vqgan_vq-512_conv-f4_1xb8-2k_skimage-64.py'


def bench_engine_overhead(args) -> dict:
    """The CPU demo's G/D step through the Runner (hooks, logging, EMA,
    schedulers, the tokenizer's ``train_step``) vs a bare PyTorch loop doing
    the same math on the same modules and data loader; seconds per
    iteration averaged after ``--warmup`` iterations."""
    from mmengine.config import Config
    from mmengine.hooks import Hook
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    from vistok.apis import apply_cli_options, build_runner
    from vistok.models.losses import (
        adaptive_gan_weight,
        discriminator_gan_loss,
    )
    from vistok.registry import MODELS

    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    iters = args.warmup + args.engine_iters
    cfg = Config.fromfile(osp.join(root, ENGINE_CONFIG))
    apply_cli_options(cfg, work_dir=tempfile.mkdtemp(), cfg_options={
        'model.adversarial_loss.start_iter': 0,
        'train_cfg.max_iters': iters, 'train_cfg.val_interval': iters + 1,
        'default_hooks.checkpoint.interval': iters + 1})

    class Clock(Hook):
        start = end = None

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            if runner.iter == args.warmup:
                Clock.start = time.perf_counter()

        def after_train_iter(self, runner, batch_idx, data_batch=None,
                             outputs=None):
            Clock.end = time.perf_counter()

    runner = build_runner(cfg)
    runner.register_hook(Clock())
    runner.train()
    runner_s = (Clock.end - Clock.start) / args.engine_iters

    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('vistok'):
        model = MODELS.build(cfg.model)
        loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
    model.init_weights()
    model.train()
    disc = model.discriminator
    gen_params = [p for part in model.generator_parts().values()
                  for p in part.parameters()]
    ema_params = list(model.ema.parameters())
    opt_g = torch.optim.Adam(gen_params, lr=1e-3, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.9))
    last_layer = model.get_parameter(model.last_layer)
    batches = iter(loader)
    for it in range(iters):
        if it == args.warmup:
            start = time.perf_counter()
        images = torch.stack(next(batches)['inputs']).float() / 127.5 - 1
        latent = model.quant_conv(model.encoder(images))
        quantized = model.quantizer(latent)
        recon = model.decoder(model.post_quant_conv(quantized.quantized))
        nll = (recon - images).abs().mean()
        disc.requires_grad_(False)
        gan = -disc(recon).mean()
        weight = 0.1 * adaptive_gan_weight(nll, gan, last_layer)
        loss = nll + sum(quantized.loss.values()) + weight * gan
        opt_g.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gen_params, 1.0)
        opt_g.step()
        disc.requires_grad_(True)
        d_loss = discriminator_gan_loss('hinge', disc(images),
                                        disc(recon.detach()))
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        with torch.no_grad():
            for p_ema, p in zip(ema_params, gen_params):
                p_ema.lerp_(p, 0.01)
    bare_s = (time.perf_counter() - start) / args.engine_iters
    return dict(config=ENGINE_CONFIG, iterations=args.engine_iters,
                runner_seconds_per_iter=runner_s,
                bare_seconds_per_iter=bare_s, overhead=runner_s / bare_s)


BENCHES = dict(fid=bench_fid_overhead, engine=bench_engine_overhead)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--benches', nargs='+', default=list(BENCHES),
                        choices=list(BENCHES))
    parser.add_argument('--num-images', type=int, default=512)
    parser.add_argument('--size', type=int, default=64)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--feature-dim', type=int, default=16)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--engine-iters', type=int, default=100)
    parser.add_argument('--warmup', type=int, default=10)
    args = parser.parse_args()
    # mmengine logs to stdout: keep it for the JSON document
    MMLogger.get_instance('vistok-bench', log_level='ERROR')
    results = {name: BENCHES[name](args) for name in args.benches}
    print(json.dumps(dict(torch=torch.__version__,
                          threads=torch.get_num_threads(), results=results),
                     indent=1))


if __name__ == '__main__':
    main()
