"""Checkpoints written before the tokenizer base existed (commit 46e63f5:
``AutoencoderTokenizer`` held the recipe, ``TiTokTokenizer`` lived in
projects/MARVEL) load into today's classes strictly, tokenize and decode
bit-identically, and resume training bit-identically (same parameter order
for the optimizer state). Fixture: tests/data/checkpoints/
tokenizers_v0.pth, written by make_tokenizer_fixtures.py there."""
import importlib.util
import os.path as osp

import pytest
import torch

from _helpers import REPO_ROOT

FIXTURES = osp.join(REPO_ROOT, 'tests/data/checkpoints')


def fixture_module():
    spec = importlib.util.spec_from_file_location(
        'make_tokenizer_fixtures',
        osp.join(FIXTURES, 'make_tokenizer_fixtures.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKE = fixture_module()
OLD = torch.load(osp.join(FIXTURES, 'tokenizers_v0.pth'), weights_only=True)


@pytest.mark.parametrize('name', sorted(MAKE.CONFIGS))
def test_old_checkpoint_loads_tokenizes_and_resumes(name):
    old = OLD[name]
    model = MAKE.build(name)
    # same construction order and random draws: the old checkpoint's keys
    model.load_state_dict(old['checkpoint']['state_dict'], strict=True)
    wrappers = MAKE.optimizers(model)
    wrappers.load_state_dict(old['checkpoint']['optimizer'])
    model.eval()
    probe = MAKE.images(100)['inputs']
    with torch.no_grad():
        x = model.data_preprocessor(dict(inputs=probe))['inputs']
        tokens = model.encode(x)
        decoded = model.decode(tokens)
        predicted = model(x, mode='predict')
    assert torch.equal(tokens, old['tokens'])
    assert torch.equal(decoded, old['decoded'])
    assert torch.equal(torch.stack([s.pred_img for s in predicted]),
                       old['pred_img'])
    # one more training step from the loaded state matches the old code's
    MAKE.step(model, wrappers, 2)
    assert MAKE.digests(model.state_dict()) == old['after_third_step']


def test_fresh_models_match_the_old_initialisation():
    """Same seed, same weights: construction order is unchanged (so seeded
    runs and optimizer state indices carry over)."""
    for name in MAKE.CONFIGS:
        fresh = MAKE.build(name).state_dict()
        old = OLD[name]['checkpoint']['state_dict']
        assert list(fresh) == list(old), name
