"""Top-k accuracy: a brute-force rank count, sklearn where installed, the
tie rule, the keys and the errors."""
import pytest
import torch
from mmengine.evaluator import Evaluator
from sklearn.metrics import top_k_accuracy_score

from vistok.evaluation import Accuracy
from vistok.evaluation.metrics.accuracy import topk_hits
from vistok.registry import METRICS
from vistok.structures import DataSample


def brute_force_topk(scores, labels, k, ties_above):
    """Percentage of samples whose label has fewer than ``k`` classes
    ranked above it: classes with a strictly higher score, plus (with
    ``ties_above``) the other classes with an equal score."""
    hits = 0
    for row, label in zip(scores.tolist(), labels.tolist()):
        above = sum(1 for c, s in enumerate(row)
                    if c != label and (s > row[label] or
                                       (ties_above and s == row[label])))
        hits += above < k
    return 100.0 * hits / len(labels)


def evaluate(scores, labels, topk, as_dict=True, batch_size=7):
    """The metric through mmengine's Evaluator, batch by batch (dicts, as
    the Runner passes them, or DataSample objects)."""
    evaluator = Evaluator(METRICS.build(dict(type='Accuracy', topk=topk)))
    for start in range(0, len(labels), batch_size):
        samples = [DataSample(pred_score=s, gt_label=torch.tensor(int(y)))
                   for s, y in zip(scores[start:start + batch_size],
                                   labels[start:start + batch_size])]
        evaluator.process([s.to_dict() if as_dict else s for s in samples])
    return evaluator.evaluate(len(labels))


@pytest.mark.parametrize('as_dict', [True, False])
def test_equals_brute_force_rank_count_on_random_scores(as_dict):
    """Random continuous scores have no ties: the count is exact."""
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(300, 10, generator=gen)
    labels = torch.randint(0, 10, (300, ), generator=gen)
    result = evaluate(scores, labels, (1, 2, 5), as_dict)
    assert set(result) == {'accuracy/top1', 'accuracy/top2',
                           'accuracy/top5'}
    for k in (1, 2, 5):
        expected = brute_force_topk(scores, labels, k, ties_above=False)
        assert result[f'accuracy/top{k}'] == pytest.approx(expected,
                                                           abs=1e-9)
    # not trivially 0 or 100: the three values differ
    assert len({result[f'accuracy/top{k}'] for k in (1, 2, 5)}) == 3


def test_logits_and_probabilities_agree_and_labels_may_be_shaped():
    """Softmax keeps the order; ``gt_label`` may be an int, a scalar or a
    one-element tensor (mmpretrain's ``(1,)``)."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 6, generator=gen)
    labels = torch.randint(0, 6, (40, ), generator=gen)
    metric = Accuracy(topk=(1, 3))
    metric.process(None, [
        dict(pred_score=s, gt_label=[int(y), y.clone(), y.reshape(1)][i % 3])
        for i, (s, y) in enumerate(zip(logits.softmax(1), labels))
    ])
    from_probs = metric.evaluate(40)
    assert from_probs == evaluate(logits, labels, (1, 3))


def test_hand_example_in_percent():
    scores = torch.tensor([[0.1, 0.7, 0.2],   # label 1: rank 0
                           [0.5, 0.3, 0.2],   # label 1: rank 1
                           [0.5, 0.3, 0.2],   # label 2: rank 2
                           [0.2, 0.2, 0.6]])  # label 2: rank 0
    labels = torch.tensor([1, 1, 2, 2])
    assert evaluate(scores, labels, (1, 2, 3)) == {
        'accuracy/top1': 50.0, 'accuracy/top2': 75.0, 'accuracy/top3': 100.0}
    metric = Accuracy(topk=1, prefix='probe')
    metric.process(None, [dict(pred_score=s, gt_label=y)
                          for s, y in zip(scores, labels)])
    assert metric.evaluate(4) == {'probe/top1': 50.0}


def test_ties_follow_torch_topk_and_stay_between_the_bounds():
    """Integer scores in {0, 1, 2} tie a lot: the metric counts what
    ``torch.topk`` selects, which lies between the optimistic (ties below
    the label) and pessimistic (ties above) rank counts."""
    gen = torch.Generator().manual_seed(2)
    scores = torch.randint(0, 3, (500, 8), generator=gen).float()
    labels = torch.randint(0, 8, (500, ), generator=gen)
    result = evaluate(scores, labels, (1, 3))
    for k in (1, 3):
        low = brute_force_topk(scores, labels, k, ties_above=True)
        high = brute_force_topk(scores, labels, k, ties_above=False)
        assert low < high  # the bounds differ: ties do matter here
        assert low <= result[f'accuracy/top{k}'] <= high
        selected = scores.topk(k, dim=1).indices
        as_topk = 100.0 * (selected == labels[:, None]).any(1).double().mean()
        assert result[f'accuracy/top{k}'] == pytest.approx(float(as_topk))


@pytest.mark.parametrize('k', [1, 5])
def test_matches_sklearn_top_k_accuracy_score(k):
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(200, 7, generator=gen)
    labels = torch.randint(0, 7, (200, ), generator=gen)
    expected = 100 * top_k_accuracy_score(
        labels.numpy(), scores.numpy(), k=k, labels=list(range(7)))
    assert evaluate(scores, labels, k)[f'accuracy/top{k}'] == \
        pytest.approx(expected)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r'topk=\(1, 5\).*only 3 classes'):
        evaluate(torch.randn(4, 3), torch.zeros(4, dtype=torch.long),
                 (1, 5))
    with pytest.raises(ValueError, match='topk must be a positive int'):
        Accuracy(topk=(0, 1))
    with pytest.raises(ValueError, match=r'gt_label must be in \[0, 3\)'):
        topk_hits(torch.randn(2, 3), torch.tensor([0, 3]), (1, ))
    with pytest.raises(ValueError, match='NaN'):
        topk_hits(torch.tensor([[0.0, float('nan')]]), torch.tensor([0]),
                  (1, ))
    metric = Accuracy()
    with pytest.raises(KeyError, match='pred_score'):
        metric.process(None, [dict(gt_label=1, pred_label=1)])
    with pytest.raises(ValueError, match=r'pred_score must be \(num_classes'):
        metric.process(None, [dict(pred_score=torch.zeros(2, 6),
                                   gt_label=1)])
    with pytest.raises(ValueError, match='gt_label must hold one'):
        metric.process(None, [dict(pred_score=torch.zeros(6),
                                   gt_label=torch.tensor([1, 2]))])


def test_class_subset_scores_only_those_classes(tmp_path):
    """ImageNet-R style: labels are positions in the subset; the best
    class outside the subset is ignored."""
    rng = torch.Generator().manual_seed(0)
    scores = torch.rand(50, 10, generator=rng)
    subset = [7, 2, 5, 9]
    labels = torch.randint(0, 4, (50, ), generator=rng)
    names = tmp_path / 'names.txt'
    names.write_text(''.join(f'c{k}\n' for k in range(10)))
    listed = tmp_path / 'subset.txt'
    listed.write_text('c7\n2\n# comment\nc5\n9\n')
    expected = 100 * (scores[:, subset].argmax(1) == labels).double().mean()
    for kwargs in (dict(class_subset=subset),
                   dict(class_subset=str(listed), class_names=str(names))):
        metric = Accuracy(topk=1, **kwargs)
        metric.process(None, [dict(pred_score=s, gt_label=int(y))
                              for s, y in zip(scores, labels)])
        result = metric.compute_metrics(metric.results)
        assert result['top1'] == pytest.approx(float(expected))
    metric = Accuracy(topk=1, class_subset=[3, 12])
    with pytest.raises(ValueError, match='class_subset holds class 12'):
        metric.process(None, [dict(pred_score=scores[0], gt_label=0)])
