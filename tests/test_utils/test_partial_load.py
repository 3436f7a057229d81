"""load_pretrained: exact round trips (state dict, .pth, .safetensors),
prefix renaming, and refusal of every missing / unexpected / shape-mismatched
key unless a pattern allows it, with the model untouched on refusal."""
import logging

import pytest
import torch
import torch.nn as nn

from vistok.utils.checkpoint import save_checkpoint_atomic
from vistok.utils.partial_load import (
    LoadReport,
    PartialLoadError,
    load_pretrained,
    prefix_rules,
)
from vistok.utils.weights import MissingWeightsError


def make_net(out_channels=3, seed=0):
    """A small conv net with a swappable head."""
    torch.manual_seed(seed)
    net = nn.Sequential()
    net.add_module('body', nn.Conv3d(1, 4, 3, padding=1))
    net.add_module('norm', nn.BatchNorm3d(4))
    net.add_module('head', nn.Conv3d(4, out_channels, 1))
    return net


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(state, other):
    assert state.keys() == other.keys()
    for key in state:
        assert torch.equal(state[key], other[key]), key


def test_round_trip_from_state_dict_loads_every_tensor():
    source, target = make_net(seed=0), make_net(seed=1)
    report = load_pretrained(target, source.state_dict())
    assert isinstance(report, LoadReport) and report.ok
    assert report.loaded == sorted(source.state_dict())
    assert not (report.missing or report.unexpected
                or report.shape_mismatches or report.allowed_missing)
    assert_same(target.state_dict(), source.state_dict())


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_round_trip_from_file(tmp_path, suffix):
    source, target = make_net(seed=0), make_net(seed=1)
    path = str(tmp_path / f'ckpt{suffix}')
    if suffix == '.pth':
        save_checkpoint_atomic({'state_dict': source.state_dict()}, path)
    else:
        from safetensors.torch import save_file
        save_file(source.state_dict(), path)
    report = load_pretrained(target, path)
    assert report.source == path
    assert_same(target.state_dict(), source.state_dict())


def test_missing_file_names_the_config_key(tmp_path):
    with pytest.raises(MissingWeightsError, match='model.pretrained.path'):
        load_pretrained(make_net(), str(tmp_path / 'none.pth'),
                        key='model.pretrained.path')


def test_shape_mismatch_refused_then_allowed_by_pattern():
    pretrained, finetune = make_net(out_channels=1, seed=0), make_net(seed=1)
    before = snapshot(finetune)
    with pytest.raises(PartialLoadError) as err:
        load_pretrained(finetune, pretrained.state_dict())
    mismatches = err.value.report.shape_mismatches
    assert {m[1] for m in mismatches} == {'head.weight', 'head.bias'}
    assert ('head.weight', 'head.weight', (1, 4, 1, 1, 1),
            (3, 4, 1, 1, 1)) in mismatches
    assert 'head.weight (1, 4, 1, 1, 1) -> head.weight (3, 4, 1, 1, 1)' in \
        str(err.value)
    assert_same(finetune.state_dict(), before)  # untouched on refusal

    report = load_pretrained(finetune, pretrained.state_dict(),
                             allow_shape_mismatch=[r'head\..*'])
    assert [m[1] for m in report.allowed_shape_mismatches] == [
        'head.weight', 'head.bias'
    ]
    after = finetune.state_dict()
    for key, value in pretrained.state_dict().items():
        expected = before[key] if key.startswith('head.') else value
        assert torch.equal(after[key], expected), key
    assert len(report.loaded) == len(after) - 2


def test_missing_keys_refused_then_allowed():
    source, target = make_net(seed=0), make_net(seed=1)
    before = snapshot(target)
    state = {k: v for k, v in source.state_dict().items()
             if not k.startswith('norm.')}
    with pytest.raises(PartialLoadError, match='norm.running_mean') as err:
        load_pretrained(target, state)
    assert sorted(err.value.report.missing) == sorted(
        k for k in before if k.startswith('norm.'))
    assert_same(target.state_dict(), before)

    report = load_pretrained(target, state, allow_missing=[r'norm\..*'])
    assert sorted(report.allowed_missing) == sorted(
        k for k in before if k.startswith('norm.'))
    after = target.state_dict()
    for key in before:
        expected = before[key] if key.startswith('norm.') else state[key]
        assert torch.equal(after[key], expected), key


def test_unexpected_keys_refused_then_allowed_before_or_after_renaming():
    source, target = make_net(seed=0), make_net(seed=1)
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    state['next_token_head.fc.weight'] = torch.zeros(2, 2)
    state['backbone.extra.weight'] = torch.zeros(2)
    with pytest.raises(PartialLoadError) as err:
        load_pretrained(target, state, prefix_map={'backbone.': ''})
    assert sorted(err.value.report.unexpected) == [
        ('backbone.extra.weight', 'extra.weight'),
        ('next_token_head.fc.weight', 'next_token_head.fc.weight'),
    ]
    report = load_pretrained(
        target, state, prefix_map={'backbone.': ''},
        allow_unexpected=[r'next_token_head\..*', r'extra\.weight'])
    assert len(report.allowed_unexpected) == 2
    assert_same(target.state_dict(), source.state_dict())


def test_prefix_map_longest_prefix_wins_and_adds_prefixes():
    rules = prefix_rules({'a.': 'x.', 'a.b.': 'y.', 'c\\d.': 'e\\f.'})
    first = [next(t for t in (r.apply(k) for r in rules) if t)[0]
             for k in ('a.b.w', 'a.w', 'z.w', 'c\\d.w')]
    assert first == ['y.w', 'x.w', 'z.w', 'e\\f.w']

    source = make_net(seed=0)
    wrapper = nn.ModuleDict({'backbone': make_net(seed=1)})
    load_pretrained(wrapper, source.state_dict(),
                    prefix_map={'': 'backbone.'})
    assert_same(wrapper['backbone'].state_dict(), source.state_dict())


def test_two_keys_renamed_onto_one_are_refused():
    source, target = make_net(seed=0), make_net(seed=1)
    state = dict(source.state_dict())
    state['old.body.weight'] = state['body.weight'].clone()
    with pytest.raises(PartialLoadError) as err:
        load_pretrained(target, state, prefix_map={'old.': ''})
    assert err.value.report.duplicates == {
        'body.weight': ['body.weight', 'old.body.weight']
    }


def test_report_is_logged():
    logger = logging.getLogger('test_partial_load')
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        load_pretrained(make_net(seed=1), make_net(1, seed=0).state_dict(),
                        allow_shape_mismatch=[r'head\..*'], logger=logger)
    finally:
        logger.removeHandler(handler)
    text = '\n'.join(r.getMessage() for r in records)
    total = len(make_net().state_dict())
    assert (f'{total - 2} of {total} model tensors match the checkpoint\'s '
            f'{total} tensors') in text
    assert 'allowed shape mismatches' in text and 'head.bias' in text


def test_select_loads_only_the_chosen_checkpoint_keys():
    """``select`` takes part of a whole model's checkpoint: the other keys
    are neither loaded nor reported unexpected, even where the model has
    them."""
    source, target = make_net(seed=0), make_net(seed=1)
    before = snapshot(target)
    report = load_pretrained(target, source.state_dict(),
                             select=[r'head\..*'],
                             allow_missing=[r'(?!head\.).*'])
    state = target.state_dict()
    for key, value in source.state_dict().items():
        expected = value if key.startswith('head.') else before[key]
        assert torch.equal(state[key], expected), key
    assert report.loaded == ['head.bias', 'head.weight']
    assert not report.unexpected
