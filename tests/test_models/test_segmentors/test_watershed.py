import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage.metrics import variation_of_information

from vistok.datasets.em.affinity import affinities_from_labels
from vistok.models.segmentors.watershed import (
    MEAN_SCORING,
    MEDIAN_SCORING,
    WatershedAgglomeration,
    WatershedFragments,
    agglomerate_numpy,
    parse_scoring_function,
    region_adjacency,
)
from vistok.registry import POSTPROCESSORS


def affinities_of(labels):
    """Nearest-neighbour affinities (waterz convention): channel d at p is
    1 iff p and p - e_d share a non-zero label."""
    return affinities_from_labels(labels)[0]


def three_regions(depth=4, size=24, noise=0.03, seed=0):
    """Three regions separated by one-voxel membranes (label 0), and noisy
    affinities (about 0.9 inside a region, 0.1 across)."""
    z, y, x = np.meshgrid(range(depth), range(size), range(size),
                          indexing='ij')
    labels = np.zeros((depth, size, size), np.int64)
    labels[x < 10] = 1
    labels[(x > 10) & (y < 12)] = 2
    labels[(x > 10) & (y > 12)] = 3
    rng = np.random.default_rng(seed)
    affinities = affinities_of(labels) * 0.8 + 0.1
    affinities += rng.normal(0, noise, affinities.shape)
    return labels, np.clip(affinities, 0, 1).astype(np.float32)


def assert_same_segmentation(labels, segmentation):
    """Equal up to renaming on the labelled (non-zero) voxels."""
    np.testing.assert_allclose(
        variation_of_information(labels, segmentation, ignore_labels=[0]),
        [0, 0], atol=1e-12)


@pytest.mark.parametrize('backend', ['waterz', 'skimage'])
@pytest.mark.parametrize('scoring', [MEDIAN_SCORING, MEAN_SCORING])
def test_agglomeration_recovers_three_regions(backend, scoring, capfd):
    labels, affinities = three_regions()
    post = POSTPROCESSORS.build(
        dict(type='WatershedAgglomeration', backend=backend,
             scoring_function=scoring))
    segmentation = post(affinities)
    assert segmentation.dtype == np.uint32
    assert segmentation.shape == labels.shape
    assert_same_segmentation(labels, segmentation)
    assert set(np.unique(segmentation)) == {1, 2, 3}
    assert capfd.readouterr().out == ''  # waterz's progress is silenced


def test_fragments_oversegment_without_crossing_regions():
    labels, affinities = three_regions()
    fragments = WatershedFragments()(affinities)
    assert fragments.dtype == np.uint32 and fragments.min() == 1
    # ids unique across slices, consecutive
    assert not set(np.unique(fragments[0])) & set(np.unique(fragments[1]))
    assert np.array_equal(np.unique(fragments),
                          np.arange(1, fragments.max() + 1))
    # every fragment lies inside one region (membrane voxels aside)
    for fragment in np.unique(fragments):
        inside = labels[fragments == fragment]
        assert len(set(inside[inside > 0])) == 1
    volume = WatershedFragments(mode='3d', boundary_channels=(0, 1, 2),
                                boundary_reduce='max')(affinities)
    assert volume.shape == labels.shape


def test_region_adjacency_collects_boundary_affinities():
    segmentation = np.array([[[1, 1, 2], [3, 3, 2]]])
    affinities = np.arange(3 * 6, dtype=np.float32).reshape(3, 1, 2, 3)
    edges, edge_of_value, values = region_adjacency(segmentation, affinities)
    assert edges.tolist() == [[1, 2], [1, 3], [2, 3]]
    collected = {tuple(edges[e]): sorted(values[edge_of_value == e])
                 for e in range(len(edges))}
    # channel 1 (y, values 6..11) at row 1 links to row 0: 3|1 twice;
    # channel 2 (x, values 12..17) at column 2 links to column 1: 2|1, 2|3
    assert collected == {(1, 2): [14.0], (1, 3): [9.0, 10.0],
                         (2, 3): [17.0]}


def test_backends_agree_on_smooth_random_affinities():
    rng = np.random.default_rng(1)
    affinities = ndi.gaussian_filter(rng.random((3, 4, 32, 32)),
                                     (0, 0.5, 2, 2))
    affinities = ((affinities - affinities.min()) /
                  np.ptp(affinities)).astype(np.float32)
    fragments = WatershedFragments()(affinities)
    assert fragments.max() > 20
    counts = []
    for threshold in (0.3, 0.5, 0.7):
        waterz_post = WatershedAgglomeration(
            threshold=threshold, scoring_function=MEAN_SCORING,
            discretize_queue=0, backend='waterz')
        merged = waterz_post.agglomerate(affinities, fragments)
        ours = agglomerate_numpy(fragments, affinities, threshold,
                                 MEAN_SCORING)
        np.testing.assert_allclose(
            variation_of_information(merged, ours), [0, 0], atol=1e-9)
        counts.append(len(np.unique(ours)))
    assert fragments.max() > counts[0] > counts[1] > counts[2]


def test_auto_backend_falls_back_to_skimage(monkeypatch):
    import vistok.models.segmentors.watershed as watershed
    assert WatershedAgglomeration().backend == 'waterz'
    monkeypatch.setattr(watershed, 'waterz_available', lambda: False)
    assert WatershedAgglomeration().backend == 'skimage'
    with pytest.raises(ImportError, match='waterz'):
        WatershedAgglomeration(backend='waterz')


def test_numpy_merging_by_hand():
    # fragments 1 | 2 | 3 along x; mean affinity 0.9 between 1-2, 0.45
    # between 2-3 (costs 0.1 and 0.55)
    fragments = np.array([[[1, 2, 3]]])
    affinities = np.zeros((3, 1, 1, 3), np.float32)
    affinities[2, 0, 0] = [0.0, 0.9, 0.45]
    assert np.unique(agglomerate_numpy(fragments, affinities, 0.5,
                                       MEAN_SCORING)).tolist() == [1, 3]
    assert len(np.unique(agglomerate_numpy(fragments, affinities, 0.6,
                                           MEAN_SCORING))) == 1
    assert len(np.unique(agglomerate_numpy(fragments, affinities, 0.1,
                                           MEAN_SCORING))) == 3


def test_scoring_functions_and_errors():
    assert parse_scoring_function(MEAN_SCORING) == dict(kind='mean')
    assert parse_scoring_function(MEDIAN_SCORING) == dict(
        kind='quantile', quantile=50, bins=256, init_with_max=True)
    with pytest.raises(ValueError, match='no prebuilt'):
        WatershedAgglomeration(
            backend='waterz',
            scoring_function='OneMinus<MaxAffinity<RegionGraphType, '
            'ScoreValue>>')
    with pytest.raises(ValueError, match='no prebuilt'):
        WatershedAgglomeration(backend='waterz', discretize_queue=100)
    with pytest.raises(ValueError, match='skimage backend understands'):
        WatershedAgglomeration(backend='skimage',
                               scoring_function='OneMinus<MaxAffinity<>>')
    with pytest.raises(ValueError, match=r'\(3, D, H, W\)'):
        WatershedFragments()(np.zeros((2, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match='backend'):
        WatershedAgglomeration(backend='elf')
