"""Per-level tokens of every quantizer (``token_levels``) and the per-level
usage / perplexity / entropy of ``CodebookUsage``."""
import math

import pytest
import torch

from vistok.evaluation.metrics.codebook_usage import CodebookUsage
from vistok.models.quantizers.base import flat_tokens, token_levels
from vistok.registry import QUANTIZERS

VQ = dict(type='VectorQuantizer', codebook_size=16, embed_dim=4)

# (config, latent shape, train mode, expected level prefixes)
CASES = {
    'vq': (VQ, (2, 4, 4, 4), False, ['']),
    'lfq': (dict(type='LookupFreeQuantizer', codebook_bits=3), (2, 3, 4, 4),
            False, ['']),
    'fsq': (dict(type='FiniteScalarQuantizer', levels=[3, 4]), (2, 2, 5),
            False, ['']),
    # dropout: some samples drop depths (ids -1), later depths may not run
    'residual_dropout': (dict(type='ResidualQuantizer', quantizer=VQ,
                              depth=3, dropout_prob=1.0), (4, 4, 4, 4), True,
                         ['depth0.', 'depth1.', 'depth2.']),
    'residual_shared': (dict(type='ResidualQuantizer', quantizer=VQ, depth=2,
                             shared_codebook=True), (2, 4, 3, 3), False,
                        ['depth0.', 'depth1.']),
    'residual_of_product': (dict(
        type='ResidualQuantizer', depth=2,
        quantizer=dict(type='ProductQuantizer', num_branches=2,
                       quantizer=dict(VQ, embed_dim=2))), (2, 4, 3, 3), False,
        ['depth0.branch0.', 'depth0.branch1.', 'depth1.branch0.',
         'depth1.branch1.']),
    'multiscale': (dict(type='MultiScaleResidualQuantizer', scales=(1, 2, 4),
                        quantizer=VQ, num_phi=2), (2, 4, 4, 4), False,
                   ['scale0.', 'scale1.', 'scale2.']),
    'product': (dict(type='ProductQuantizer', quantizer=[
        VQ, dict(type='VectorQuantizer', codebook_size=8, embed_dim=2)]),
        (2, 6, 3, 3), False, ['branch0.', 'branch1.']),
    # ImageFolder: multi-scale branches with a shared dropout draw
    'product_of_multiscale': (dict(
        type='ProductQuantizer', num_branches=2,
        quantizer=dict(type='MultiScaleResidualQuantizer', scales=(1, 2),
                       quantizer=VQ, num_phi=1, dropout_ratio=0.5)),
        (3, 8, 2, 2), True,
        ['branch0.scale0.', 'branch0.scale1.', 'branch1.scale0.',
         'branch1.scale1.']),
    'hierarchical': (dict(type='HierarchicalQuantizer',
                          top_quantizer=dict(VQ, embed_dim=16),
                          bottom_quantizer=dict(type='ResidualQuantizer',
                                                quantizer=VQ, depth=2)),
                     (2, 4, 4, 4), False,
                     ['top.', 'bottom.depth0.', 'bottom.depth1.']),
    'hierarchical_shared': (dict(type='HierarchicalQuantizer',
                                 top_quantizer=dict(VQ, embed_dim=16),
                                 shared_codebook=True), (2, 4, 4, 4), False,
                            ['top.', 'bottom.']),
}


def histogram(tokens, size):
    tokens = tokens.reshape(-1)
    return torch.bincount(tokens[tokens >= 0], minlength=size)


@pytest.mark.parametrize('name', sorted(CASES))
def test_token_levels_match_the_quantizer_stats(name):
    cfg, shape, training, prefixes = CASES[name]
    torch.manual_seed(0)
    quantizer = QUANTIZERS.build(cfg).train(training)
    out = quantizer(torch.randn(shape))
    levels = token_levels(quantizer, out.indices)
    assert list(levels) == prefixes
    reported = {key[:-len('code_counts')] for key in out.stats
                if key.endswith('code_counts')}
    # every level the forward reported is a level of token_levels ...
    assert reported <= set(levels)
    for prefix, (tokens, size) in levels.items():
        assert tokens.dtype == torch.int64 and tokens.shape[0] == shape[0]
        if prefix in reported:
            # ... with the very histogram the forward counted
            assert torch.equal(histogram(tokens, size),
                               out.stats[prefix + 'code_counts'])
        else:  # a depth no sample kept is not run: all its ids are dropped
            assert (tokens < 0).all()
    if name == 'residual_dropout':
        assert (levels['depth2.'][0] < 0).any()


def test_token_levels_of_single_level_quantizer_is_its_indices():
    quantizer = QUANTIZERS.build(VQ)
    indices = quantizer.encode(torch.randn(2, 4, 3, 3))
    (tokens, size), = token_levels(quantizer, indices).values()
    assert torch.equal(tokens, indices) and size == 16
    assert list(token_levels(quantizer, indices, prefix='depth3.')) == [
        'depth3.'
    ]


def sample(tokens, levels):
    """A predicted sample as the Evaluator passes it (DataSample.to_dict():
    metainfo merged in)."""
    return dict(tokens=tokens, codebook_size=10,
                token_levels={p: t for p, (t, _) in levels.items()},
                level_codebook_sizes={p: k for p, (_, k) in levels.items()})


def random_samples(num, seed=0):
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(num):
        depth0 = torch.randint(0, 4, (3, 3), generator=generator)
        depth1 = torch.randint(-1, 6, (3, 3), generator=generator)
        samples.append(sample(
            torch.randint(-1, 10, (5, ), generator=generator),
            {'depth0.': (depth0, 4), 'depth1.': (depth1, 6)}))
    return samples


def expected(counts):
    p = counts.double() / counts.sum()
    entropy = -sum(x * math.log(x) for x in p.tolist() if x > 0)
    return dict(usage=(counts > 0).double().mean().item(), entropy=entropy,
                perplexity=math.exp(entropy))


def test_codebook_usage_per_level_matches_histograms():
    samples = random_samples(6)
    metric = CodebookUsage()
    metric.process(None, samples)
    result = metric.evaluate(size=len(samples))

    truth = {'': expected(histogram(torch.cat(
        [s['tokens'].reshape(-1) for s in samples]), 10))}
    for prefix, size in (('depth0.', 4), ('depth1.', 6)):
        truth[prefix] = expected(histogram(torch.cat(
            [s['token_levels'][prefix].reshape(-1) for s in samples]), size))
    assert set(result) == {p + k for p in truth for k in truth[p]}
    for prefix, values in truth.items():
        for key, value in values.items():
            assert result[prefix + key] == pytest.approx(value, rel=1e-5)


def test_codebook_usage_merges_ranks_exactly():
    """Per-sample results, so the all-gathered results of two ranks give the
    numbers of one process seeing every sample."""
    samples = random_samples(7, seed=1)
    single = CodebookUsage()
    single.process(None, samples)
    ranks = [CodebookUsage(), CodebookUsage()]
    ranks[0].process(None, samples[:3])
    ranks[1].process(None, samples[3:])
    gathered = ranks[0].results + ranks[1].results  # what collect_results does
    assert ranks[0].compute_metrics(gathered) == single.compute_metrics(
        single.results)


def test_codebook_usage_from_a_quantizer():
    """The fields the tokenizer's predict sets from ``token_levels``: the
    metric reproduces the forward's per-level stats."""
    torch.manual_seed(0)
    quantizer = QUANTIZERS.build(CASES['product'][0]).eval()
    out = quantizer(torch.randn(3, 6, 3, 3))
    levels = token_levels(quantizer, out.indices)
    tokens = flat_tokens(quantizer, out.indices)
    metric = CodebookUsage()
    metric.process(None, [
        dict(tokens=tokens[i], codebook_size=quantizer.codebook_size,
             token_levels={p: t[i] for p, (t, _) in levels.items()},
             level_codebook_sizes={p: k for p, (_, k) in levels.items()})
        for i in range(3)
    ])
    result = metric.evaluate(size=3)
    for prefix in levels:
        for key in ('usage', 'perplexity', 'entropy'):
            assert result[prefix + key] == pytest.approx(
                out.stats[prefix + key].item(), rel=1e-5)


def test_codebook_usage_rejects_inconsistent_levels():
    levels = {'depth0.': (torch.tensor([0, 1]), 4)}
    metric = CodebookUsage()
    metric.process(None, [sample(torch.tensor([0]), levels),
                          sample(torch.tensor([1]), {})])
    with pytest.raises(ValueError, match='prefixes'):
        metric.evaluate(size=2)
    bad = sample(torch.tensor([0]), levels)
    del bad['level_codebook_sizes']
    with pytest.raises(KeyError, match='level_codebook_sizes'):
        CodebookUsage().process(None, [bad])
    metric = CodebookUsage()
    metric.process(None, [sample(torch.tensor([0]),
                                 {'depth0.': (torch.tensor([7]), 4)})])
    with pytest.raises(ValueError, match=r"level_codebook_sizes\['depth0.'\]"):
        metric.evaluate(size=1)


def test_codebook_usage_entropy_in_bits():
    """``log_base=2`` reports the entropies in bits (TiTok's evaluator);
    usage and perplexity do not depend on the base."""
    samples = random_samples(6)
    results = []
    for log_base in (None, 2):
        metric = CodebookUsage(log_base=log_base)
        metric.process(None, samples)
        results.append(metric.evaluate(size=len(samples)))
    nats, bits = results
    assert set(nats) == set(bits)
    for key in nats:
        expected_value = nats[key] / math.log(2) if key.endswith(
            'entropy') else nats[key]
        assert bits[key] == pytest.approx(expected_value, rel=1e-6), key
    with pytest.raises(ValueError, match='log_base'):
        CodebookUsage(log_base=1)
