"""Speed of the embedded datasets (run by hand; prints JSON).

    python bench/datasets.py [--num 500]
"""
import argparse
import json
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from vistok.datasets import ProceduralShapesDataset  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--num', type=int, default=500)
    args = parser.parse_args()
    results = []
    for size in (64, 256):
        dataset = ProceduralShapesDataset(num_samples=args.num,
                                          image_size=size)
        start = time.perf_counter()
        for i in range(args.num):
            dataset.render(i)
        seconds = (time.perf_counter() - start) / args.num
        results.append(dict(dataset='ProceduralShapesDataset',
                            image_size=size, ms_per_image=1e3 * seconds))
    print(json.dumps(results, indent=1))


if __name__ == '__main__':
    main()
