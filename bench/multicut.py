"""Where the time of the LMC (multicut) post-processing goes, and its VOI
next to waterz's, on a synthetic EM volume.

Generates a ``(depth, size, size)`` volume with
:class:`vistok.datasets.em.SyntheticEMVolume` (seed ``--seed``), makes
"predicted" affinities from its labels: the training targets
(:func:`~vistok.datasets.em.affinity.affinities_from_labels`, boundary
widening on, as the TokenUnify configs), squeezed onto ``[0.05, 0.95]``,
blurred in-plane (``--blur``) and with Gaussian noise (``--noise``),
clipped to ``[0, 1]``. Then times the stages of
:class:`vistok.models.segmentors.Multicut` with the official LMC defaults
separately: fragments (per-slice distance-transform watershed), graph
(region adjacency + costs), GAEC, Kernighan–Lin; and the waterz path
(:class:`~vistok.models.segmentors.WatershedAgglomeration`, official
settings) as a whole. VOI (split, merge, sum; bits, skimage) and ARAND of
both against the unwidened labels (label 0 ignored). Prints JSON (run by
hand; never in CI)::

    python bench/multicut.py [--depth 16 --size 512 --seed 0]
"""
import argparse
import json
import os.path as osp
import sys
import time

import numpy as np
from scipy import ndimage

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from skimage.metrics import (  # noqa: E402
    adapted_rand_error,
    variation_of_information,
)

from vistok.datasets.em.affinity import affinities_from_labels  # noqa: E402
from vistok.datasets.em.synthetic import SyntheticEMVolume  # noqa: E402
from vistok.models.segmentors.multicut import (  # noqa: E402
    Multicut,
    greedy_additive_edge_contraction,
    kernighan_lin,
    multicut_objective,
)
from vistok.models.segmentors.watershed import (  # noqa: E402
    WatershedAgglomeration,
    to_uint32_segmentation,
)


def noisy_affinities(labels: np.ndarray, blur: float, noise: float,
                     seed: int) -> np.ndarray:
    """Affinity targets of ``labels`` made to look predicted."""
    target = affinities_from_labels(labels, widen_boundaries=True)[0]
    affinities = 0.05 + 0.9 * target.astype(np.float32)
    affinities = ndimage.gaussian_filter(affinities, (0, 0, blur, blur))
    rng = np.random.default_rng(seed)
    affinities += noise * rng.standard_normal(affinities.shape,
                                              dtype=np.float32)
    return np.clip(affinities, 0, 1).astype(np.float32)


def scores(labels: np.ndarray, segmentation: np.ndarray) -> dict:
    """VOI split / merge / sum (bits) and ARAND, label 0 ignored."""
    split, merge = variation_of_information(labels, segmentation,
                                            ignore_labels=[0])
    arand = adapted_rand_error(labels, segmentation, ignore_labels=[0])[0]
    return dict(voi_split=float(split), voi_merge=float(merge),
                voi=float(split + merge), arand=float(arand),
                segments=int(len(np.unique(segmentation))))


def timed(fn):
    """``(result, seconds)`` of one call."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--depth', type=int, default=16)
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--blur', type=float, default=1.0)
    parser.add_argument('--noise', type=float, default=0.1)
    parser.add_argument('--no-waterz', action='store_true')
    args = parser.parse_args()
    shape = (args.depth, args.size, args.size)
    _, labels = SyntheticEMVolume()(shape, args.seed)
    affinities = noisy_affinities(labels, args.blur, args.noise, args.seed)

    multicut = Multicut()
    fragments, t_fragments = timed(lambda: multicut.fragments(affinities))
    (num_nodes, edges, costs), t_graph = timed(
        lambda: multicut.graph(affinities, fragments))
    greedy, t_gaec = timed(
        lambda: greedy_additive_edge_contraction(num_nodes, edges, costs))
    refined, t_kl = timed(lambda: kernighan_lin(
        num_nodes, edges, costs, greedy, multicut.max_rounds))
    segmentation = to_uint32_segmentation(
        np.where(fragments > 0, refined[fragments] + 1, 0))
    total = t_fragments + t_graph + t_gaec + t_kl
    result = dict(
        shape=list(shape),
        seed=args.seed,
        affinities=dict(blur=args.blur, noise=args.noise),
        lmc=dict(
            fragments=int(fragments.max()),
            edges=int(len(edges)),
            seconds=dict(fragments=t_fragments, graph=t_graph, gaec=t_gaec,
                         kernighan_lin=t_kl, total=total),
            share=dict(fragments=t_fragments / total, graph=t_graph / total,
                       gaec=t_gaec / total, kernighan_lin=t_kl / total),
            objective=dict(
                gaec=multicut_objective(edges, costs, greedy),
                kernighan_lin=multicut_objective(edges, costs, refined)),
            scores=scores(labels, segmentation),
            fragment_scores=scores(labels, fragments)))
    if not args.no_waterz:
        waterz = WatershedAgglomeration()
        segmentation, t_waterz = timed(lambda: waterz(affinities))
        result['waterz'] = dict(backend=waterz.backend, seconds=t_waterz,
                                scores=scores(labels, segmentation))
    print(json.dumps(result, indent=1))


if __name__ == '__main__':
    main()
