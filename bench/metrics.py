"""Evaluation overheads of vistok's metrics against direct library calls.

    python bench/metrics.py [--benches fid] [--num-images 512] [--size 64]

Prints one JSON document. ``fid``: the whole ``FrechetInceptionDistance``
metric (``process`` over batches of float images + ``compute_metrics``,
FID only) against one ``torch_fidelity.calculate_metrics(fid=True,
cache=False)`` call on the same images (uint8), both with the same small
random conv network (``RandomConvFeatures``, registered in torch-fidelity as
a custom extractor), so the time is the metric's own bookkeeping plus the
shared extraction; ``overhead`` = metric / torch-fidelity (target <= 1.1).
Run by hand; never in CI.
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


# The engine-overhead benchmark (bench_engine_overhead) goes here.

BENCHES = dict(fid=bench_fid_overhead)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--benches', nargs='+', default=list(BENCHES),
                        choices=list(BENCHES))
    parser.add_argument('--num-images', type=int, default=512)
    parser.add_argument('--size', type=int, default=64)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--feature-dim', type=int, default=16)
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    # mmengine logs to stdout: keep it for the JSON document
    MMLogger.get_instance('vistok-bench', log_level='ERROR')
    results = {name: BENCHES[name](args) for name in args.benches}
    print(json.dumps(dict(torch=torch.__version__,
                          threads=torch.get_num_threads(), results=results),
                     indent=1))


if __name__ == '__main__':
    main()
