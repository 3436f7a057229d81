import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.metrics import variation_of_information

from vistok.datasets.em.affinity import affinities_from_labels
from vistok.models.segmentors.multicut import (
    Multicut,
    greedy_additive_edge_contraction,
    kernighan_lin,
    multicut_objective,
)
from vistok.registry import POSTPROCESSORS


def partitions(n):
    """Every partition of n nodes as a label array (restricted growth)."""
    def grow(labels, used):
        if len(labels) == n:
            yield np.array(labels)
            return
        for label in range(used + 1):
            yield from grow(labels + [label], max(used, label + 1))
    yield from grow([], 0)


def optimum(n, edges, costs):
    return min(multicut_objective(edges, costs, labels)
               for labels in partitions(n))


def same_partition(a, b):
    return np.array_equal(a[:, None] == a[None], b[:, None] == b[None])


def affinities_of(labels):
    """Nearest-neighbour affinities (waterz convention): channel d at p is
    1 iff p and p - e_d share a non-zero label."""
    return affinities_from_labels(labels)[0]


def test_gaec_finds_the_optimum_of_two_triangles():
    # two attractive triangles, one strong repulsive and one weak
    # attractive edge between them: optimum {0, 1, 2} | {3, 4, 5}, -3
    edges = np.array([[0, 1], [1, 2], [0, 2], [3, 4], [4, 5], [3, 5],
                      [2, 3], [0, 4]])
    costs = np.array([2., 3, 1, 2, 3, 1, -4, 1])
    labels = greedy_additive_edge_contraction(6, edges, costs)
    assert same_partition(labels, np.array([0, 0, 0, 1, 1, 1]))
    assert multicut_objective(edges, costs, labels) == -3
    assert optimum(6, edges, costs) == -3


def test_kernighan_lin_repairs_a_greedy_mistake():
    # GAEC contracts 0-1 first (ties broken by node id) and then joins
    # everything (objective 0); cutting node 0 off gives -2, the optimum
    edges = np.array([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3]])
    costs = np.array([5., -3, -4, 5, 5])
    greedy = greedy_additive_edge_contraction(4, edges, costs)
    assert multicut_objective(edges, costs, greedy) == 0
    refined = kernighan_lin(4, edges, costs, greedy)
    assert same_partition(refined, np.array([0, 1, 1, 1]))
    assert multicut_objective(edges, costs, refined) == optimum(
        4, edges, costs) == -2


def test_kernighan_lin_never_worsens_gaec_on_random_graphs():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = 7
        edges = np.array([(i, j) for i in range(n) for j in range(i + 1, n)
                          if rng.random() < 0.5]).reshape(-1, 2)
        costs = rng.normal(size=len(edges))
        greedy = greedy_additive_edge_contraction(n, edges, costs)
        refined = kernighan_lin(n, edges, costs, greedy)
        best = optimum(n, edges, costs)
        assert best <= multicut_objective(edges, costs, refined) + 1e-12
        assert (multicut_objective(edges, costs, refined)
                <= multicut_objective(edges, costs, greedy) + 1e-12)
        # every cluster is connected by its uncut edges
        inner = edges[refined[edges[:, 0]] == refined[edges[:, 1]]]
        graph = coo_matrix((np.ones(len(inner)), (inner[:, 0], inner[:, 1])),
                           shape=(n, n))
        assert connected_components(graph, directed=False)[0] == len(
            np.unique(refined))


@pytest.mark.parametrize('solver', ['gaec', 'kernighan_lin'])
def test_multicut_recovers_three_regions(solver):
    z, y, x = np.meshgrid(range(4), range(24), range(24), indexing='ij')
    labels = np.zeros(z.shape, np.int64)
    labels[x < 10] = 1
    labels[(x > 10) & (y < 12)] = 2
    labels[(x > 10) & (y > 12)] = 3
    rng = np.random.default_rng(0)
    affinities = affinities_of(labels) * 0.8 + 0.1
    affinities = np.clip(affinities + rng.normal(0, 0.03, affinities.shape),
                         0, 1)
    # unsmoothed fragments: region boundaries are exact
    fragments = dict(type='WatershedFragments', boundary_reduce='max',
                     threshold=0.25, sigma_seeds=2.0)
    post = POSTPROCESSORS.build(
        dict(type='Multicut', solver=solver, fragments=fragments))
    segmentation = post(affinities)
    assert segmentation.dtype == np.uint32
    assert set(np.unique(segmentation)) == {1, 2, 3}
    np.testing.assert_allclose(
        variation_of_information(labels, segmentation, ignore_labels=[0]),
        [0, 0], atol=1e-12)
    # a strong cut bias keeps fragments apart
    split = Multicut(solver=solver, beta=0.999,
                     fragments=fragments)(affinities)
    assert len(np.unique(split)) > 3
    # the official fragments (height map smoothed with sigma 2) may put a
    # few voxels at the T-junction on the wrong side
    official = Multicut(solver=solver)(affinities)
    assert set(np.unique(official)) == {1, 2, 3}
    assert sum(variation_of_information(labels, official,
                                        ignore_labels=[0])) < 0.1


def test_errors():
    with pytest.raises(ValueError, match='solver'):
        Multicut(solver='ilp')
    with pytest.raises(ValueError, match='costs'):
        greedy_additive_edge_contraction(3, np.array([[0, 1]]),
                                         np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match='endpoints'):
        greedy_additive_edge_contraction(2, np.array([[0, 2]]),
                                         np.array([1.0]))
