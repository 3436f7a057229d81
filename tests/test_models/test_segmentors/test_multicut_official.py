"""The official TokenUnify LMC path (``utils/lmc.py`` of
ydchen0806/TokenUnify, commit 221674f4c9b87efc730370dcf0443cf0f334c928,
with elf's ``distance_transform_watershed`` and
``transform_probabilities_to_costs``, elf commits d85dcf8 / 17cd197):
fragments, edge costs and the defaults of ``Multicut``."""
import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import local_maxima
from skimage.segmentation import watershed

from vistok.models.segmentors.multicut import (
    Multicut,
    transform_probabilities_to_costs,
)
from vistok.models.segmentors.watershed import (
    DistanceTransformWatershed,
    distance_transform_watershed,
)
from vistok.registry import POSTPROCESSORS


def random_affinities(shape, seed):
    """Smooth random ``(3, *shape)`` affinities in [0, 1] with blob-like
    regions (a watershed cuts them into many fragments, some small)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((3, ) + shape),
                                    (0, 0, 1.5, 1.5))
    field = (field - field.min()) / (field.max() - field.min())
    # stretched so that ~10 % of the boundary map is below 0.25
    return np.clip(4 * field - 1.4, 0, 1).astype(np.float32)


def same_partition(a, b):
    a, b = a.ravel(), b.ravel()
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(pairs[0]) == len(np.unique(a)) == len(np.unique(b))


def vigra_gaussian(image, sigma):
    """vigra's ``gaussianSmoothing`` written out: sampled Gaussian of
    radius ``round(3 σ)``, normalised to sum 1, mirror borders without
    repeating the edge pixel."""
    radius = int(3 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-x**2 / (2 * sigma**2))
    kernel /= kernel.sum()
    out = np.asarray(image, np.float64)
    for axis in range(out.ndim):
        out = ndimage.correlate1d(out, kernel, axis=axis, mode='mirror')
    return out


def reference_slice(boundary, threshold=0.25, sigma_seeds=2.0,
                    sigma_weights=2.0, min_size=100, alpha=0.9):
    """elf's ``distance_transform_watershed`` with the official
    parameters, step by step (vigra → SciPy / scikit-image)."""
    dt = ndimage.distance_transform_edt(~(boundary > threshold))
    dt = vigra_gaussian(dt, sigma_seeds)
    seeds = ndimage.label(local_maxima(dt, allow_borders=True))[0]
    hmap = (alpha * vigra_gaussian(boundary, sigma_weights)
            + (1 - alpha) * (1 - (dt - dt.min()) / dt.max()))
    ws = watershed(hmap, seeds)
    ids, sizes = np.unique(ws, return_counts=True)
    ws[np.isin(ws, ids[sizes < min_size])] = 0
    return watershed(hmap, ws)


def test_no_fragment_below_min_size_on_a_random_volume():
    affinities = random_affinities((3, 64, 64), seed=0)
    fragments = DistanceTransformWatershed()(affinities)
    sizes = np.bincount(fragments.ravel())[1:]
    assert fragments.min() == 1 and (sizes > 0).all()
    assert sizes.min() >= 100
    # not vacuous: without the size filter some fragments are smaller,
    # and the filter keeps every slice cut into several fragments
    boundary = DistanceTransformWatershed().boundary_map(affinities)
    unfiltered = distance_transform_watershed(boundary[0], 0.25, 2.0,
                                              min_size=0)[0]
    assert np.bincount(unfiltered.ravel())[1:].min() < 100
    assert all(len(np.unique(f)) > 3 for f in fragments)
    # fragments never cross slices (2-D per slice, ids unique)
    for z in range(1, len(fragments)):
        assert not set(np.unique(fragments[z])) & set(
            np.unique(fragments[z - 1]))


def test_fragments_equal_the_official_procedure_written_out():
    affinities = random_affinities((3, 48, 48), seed=1)
    fragments = DistanceTransformWatershed()(affinities)
    boundary = np.maximum(1 - affinities[1], 1 - affinities[2])
    expected = np.zeros(boundary.shape, np.int64)
    offset = 0
    for z in range(len(boundary)):
        ws = reference_slice(boundary[z])
        expected[z] = ws + offset
        offset += ws.max()
    assert same_partition(fragments, expected)
    assert len(np.unique(fragments)) == len(np.unique(expected)) > 6


def test_costs_are_the_official_mapping():
    p = np.array([0.0, 0.001, 0.2, 0.5, 0.9, 1.0])
    squeezed = 0.998 * p + 0.001  # (p_max - p_min) p + p_min
    expected = np.log((1 - squeezed) / squeezed)
    np.testing.assert_allclose(transform_probabilities_to_costs(p),
                               expected, rtol=1e-12)
    # the extremes are squeezed, not clipped: +-log(999)
    np.testing.assert_allclose(
        transform_probabilities_to_costs(np.array([0.0, 1.0])),
        [np.log(999), -np.log(999)], rtol=1e-12)
    assert transform_probabilities_to_costs(np.array([0.001]))[0] != \
        pytest.approx(np.log(999))
    beta = 0.7
    sizes = np.array([3., 1, 6, 2, 6, 4])
    np.testing.assert_allclose(
        transform_probabilities_to_costs(p, beta, sizes, 2.0),
        (expected + np.log((1 - beta) / beta)) * (sizes / 6)**2,
        rtol=1e-12)


def test_graph_costs_equal_a_brute_force_count():
    """Edge costs of ``Multicut.graph``: mean of ``1 - affinity`` over the
    face-adjacent voxel pairs (all three offsets) and their count, mapped
    as elf does, counted here voxel by voxel."""
    rng = np.random.default_rng(2)
    fragments = rng.integers(1, 5, (3, 4, 5))
    affinities = rng.random((3, 3, 4, 5)).astype(np.float32)
    values = {}
    for z, y, x in np.ndindex(fragments.shape):
        for axis, (dz, dy, dx) in enumerate([(1, 0, 0), (0, 1, 0),
                                             (0, 0, 1)]):
            q = (z - dz, y - dy, x - dx)
            if min(q) < 0:
                continue
            u, v = fragments[z, y, x], fragments[q]
            if u != v:
                key = (min(u, v), max(u, v))
                values.setdefault(key, []).append(
                    1.0 - float(affinities[axis, z, y, x]))
    num_nodes, edges, costs = Multicut().graph(affinities, fragments)
    assert num_nodes == 5
    assert [tuple(e) for e in edges.tolist()] == sorted(values)
    mean = np.array([np.mean(values[k]) for k in sorted(values)])
    count = np.array([len(values[k]) for k in sorted(values)], float)
    squeezed = 0.998 * mean + 0.001
    np.testing.assert_allclose(
        costs, np.log((1 - squeezed) / squeezed) * count / count.max(),
        rtol=1e-6)


def test_multicut_defaults_are_the_official_lmc_path():
    post = POSTPROCESSORS.build(dict(type='Multicut'))
    fragments = post.fragments
    assert isinstance(fragments, DistanceTransformWatershed)
    assert (fragments.threshold, fragments.sigma_seeds,
            fragments.sigma_weights, fragments.min_size, fragments.alpha,
            fragments.mode) == (0.25, 2.0, 2.0, 100, 0.9, '2d')
    assert fragments.boundary.boundary_channels == (1, 2)
    assert fragments.boundary.boundary_reduce == 'max'
    assert (post.beta, post.p_min, post.edge_size_weighting,
            post.solver) == (0.5, 0.001, True, 'kernighan_lin')


def test_errors():
    with pytest.raises(ValueError, match='p_min'):
        transform_probabilities_to_costs(np.array([0.5]), p_min=0.5)
    with pytest.raises(ValueError, match='edge_sizes'):
        transform_probabilities_to_costs(np.array([0.5]),
                                         edge_sizes=np.array([1., 2.]))
    with pytest.raises(ValueError, match='min_size'):
        DistanceTransformWatershed(min_size=-1)
