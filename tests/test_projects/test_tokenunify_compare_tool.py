"""projects/TokenUnify/tools/compare_pretraining.py without training: the
paired per-seed statistics against a hand computation, and the seed
plumbing (both arms of a seed get that seed and see the same training
draws, which follow the sampler's definition for that seed). The full
pipeline through the tool is tested in test_tokenunify_pipeline.py."""
import math
import runpy

import pytest
import torch

from _helpers import REPO_ROOT
from vistok.datasets.samplers import draw_seed

TOOL = runpy.run_path(
    f'{REPO_ROOT}/projects/TokenUnify/tools/compare_pretraining.py')

# hand-made per-seed results (seeds 1, 2 are the measured VOIs)
RUNS = [
    dict(seed=1, scratch=dict(voi=2.69, arand=0.40),
         tokenunify=dict(voi=1.65, arand=0.30)),
    dict(seed=2, scratch=dict(voi=1.41, arand=0.30),
         tokenunify=dict(voi=1.55, arand=0.35)),
    dict(seed=7, scratch=dict(voi=1.80, arand=0.20),
         tokenunify=dict(voi=1.50, arand=0.20)),
]


def test_paired_summary_matches_hand_computation():
    summary = TOOL['paired_summary'](RUNS)
    # VOI differences tokenunify - scratch: -1.04, +0.14, -0.30; mean -0.40;
    # deviations -0.64, +0.54, +0.10: squares 0.4096 + 0.2916 + 0.01 =
    # 0.7112, sample variance 0.7112 / 2 = 0.3556
    voi = summary['voi']
    assert voi['diffs'] == pytest.approx([-1.04, 0.14, -0.30])
    assert voi['mean'] == pytest.approx(-0.40)
    assert voi['std'] == pytest.approx(math.sqrt(0.3556))
    assert (voi['n'], voi['tokenunify_better']) == (3, 2)
    assert voi['scratch_mean'] == pytest.approx(5.90 / 3)
    assert voi['tokenunify_mean'] == pytest.approx(4.70 / 3)
    # ARAND: -0.10, +0.05, 0.00 (a tie is not "better"); mean -0.05 / 3;
    # squares (-0.25/3)^2 + (0.2/3)^2 + (0.05/3)^2 = 0.1050 / 9
    arand = summary['arand']
    assert arand['mean'] == pytest.approx(-0.05 / 3)
    assert arand['std'] == pytest.approx(math.sqrt(0.1050 / 9 / 2))
    assert arand['tokenunify_better'] == 1

    one = TOOL['paired_summary'](RUNS[:1])['voi']
    assert one['std'] is None and one['mean'] == pytest.approx(-1.04)
    with pytest.raises(ValueError, match='repeated seeds'):
        TOOL['paired_summary'](RUNS + RUNS[:1])
    with pytest.raises(ValueError, match='at least one seed'):
        TOOL['paired_summary']([])

    table = TOOL['format_table'](dict(
        pretrain_iters=150, finetune_iters=300, runs=RUNS, paired=summary,
        trivial=dict(one_segment=dict(voi=4.63, arand=0.914))))
    assert 'paired voi: -0.400 +- 0.596 (sample std, n=3)' in table
    assert 'TokenUnify better in 2/3 seeds' in table
    assert '     2            1.410            1.550' in table


def test_both_arms_of_a_seed_see_the_same_training_draws(tmp_path):
    checkpoint = str(tmp_path / 'pretrain' / 'iter_150.pth')
    arms = TOOL['finetune_configs'](str(tmp_path), 300, checkpoint, seed=3)
    assert set(arms) == set(TOOL['ARMS'])
    assert arms['tokenunify'].model.pretrained.checkpoint == checkpoint
    assert not arms['scratch'].model.get('pretrained')
    for cfg in arms.values():
        assert cfg.randomness.seed == 3 and cfg.train_cfg.max_iters == 300
    draws = {arm: TOOL['training_draws'](cfg, 6)
             for arm, cfg in arms.items()}
    assert draws['scratch'] == draws['tokenunify']
    # the draws seed 3 defines (ResumableInfiniteSampler, one rank; the
    # config's default seed 0 would give others):
    # epoch 0 is a torch.randperm of the dataset from seed + 0, draw i's
    # augmentation seed is draw_seed(seed, 0, i)
    size = arms['scratch'].train_dataloader.dataset.samples_per_epoch
    order = torch.randperm(size, generator=torch.Generator().manual_seed(3))
    assert draws['scratch'] == [(int(order[i]), draw_seed(3, 0, i))
                                for i in range(6)]
