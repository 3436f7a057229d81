"""ImageFolder's ablation configs (README table, rows 1-8): each row
differs from its predecessor only in the keys its README row names."""
import os.path as osp

import pytest
from mmengine.config import Config

from _helpers import REPO_ROOT

ABLATION = osp.join(REPO_ROOT, 'projects/ImageFolder/configs/ablation')
SUFFIX = '_dinov2-b_8xb128-200e_in1k-256.py'
ROWS = ['row1-msrq-var', 'row2-qdrop', 'row3-k11', 'row4-pq2', 'row5-sem-all',
        'row6-sem-branch1', 'row7-dinodisc', 'row8-msvr10p2-4k']
#: what row k changes w.r.t. row k-1 (a key may name a subtree)
CHANGES = {
    2: {'model.quantizer'},  # quantizer dropout 0.1 from scale 3
    3: {'model.encoder.latent_grid_size', 'model.decoder.latent_grid_size',
        'model.quantizer'},  # K = 11 and ImageFolder's scales
    4: {'model.encoder.num_branches', 'model.decoder.num_branches',
        'model.quantizer.num_branches',
        'model.semantic_loss.num_branches'},  # two branches
    5: {'model.semantic_loss.target'},  # 'all'
    6: {'model.semantic_loss.target'},  # the last branch
    7: {'model.discriminator'},  # DINO features + DiffAugment
    8: {'model.adversarial_loss.lecam_weight'},  # LeCam 0.001
}


def flatten(tree, prefix=''):
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(flatten(value, f'{prefix}{key}.'))
        return out
    return {prefix[:-1]: tree}


def load(row):
    cfg = Config.fromfile(osp.join(ABLATION, f'imagefolder_{row}{SUFFIX}'))
    return flatten(cfg.to_dict())


@pytest.mark.parametrize('row', sorted(CHANGES))
def test_ablation_row_changes_only_its_keys(row):
    before, after = load(ROWS[row - 2]), load(ROWS[row - 1])
    changed = {key for key in before.keys() | after.keys()
               if before.get(key, '<absent>') != after.get(key, '<absent>')}
    changed.discard('filename')
    assert changed, f'row {row} changes nothing'
    allowed = CHANGES[row]
    stray = {key for key in changed
             if not any(key == a or key.startswith(a + '.') for a in allowed)}
    assert not stray, f'row {row} also changes {sorted(stray)}'
    # every listed change is made
    for key in allowed:
        assert any(c == key or c.startswith(key + '.') for c in changed), key


def test_row_values():
    row1, row2, row3 = load(ROWS[0]), load(ROWS[1]), load(ROWS[2])
    assert row1['model.quantizer.quantizer.dropout_ratio'] == 0.0
    assert row2['model.quantizer.quantizer.dropout_ratio'] == 0.1
    assert row2['model.quantizer.quantizer.start_scale'] == 3
    assert row2['model.quantizer.quantizer.scales'] == [
        1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
    assert row3['model.quantizer.quantizer.scales'] == [
        1, 1, 2, 3, 3, 4, 5, 6, 8, 11]
    row8 = load(ROWS[7])
    assert row8['model.adversarial_loss.lecam_weight'] == 0.001
    assert row8['model.discriminator.type'] == 'FrozenFeatureDiscriminator'
    assert load(ROWS[5])['model.discriminator.type'] == \
        'PatchGANDiscriminator'
    assert load(ROWS[4])['model.semantic_loss.target'] == 'all'
    assert load(ROWS[5])['model.semantic_loss.target'] == -1
