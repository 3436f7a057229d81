"""TokenUnify end to end on the embedded synthetic EM volume (CPU): pre-train
(three tasks, curriculum hook) -> fine-tune from it (and from scratch) ->
Gaussian sliding-window prediction of a whole test volume -> watershed +
waterz agglomeration -> VOI / ARAND, through the project's comparison
script."""
import json
import runpy

import torch

from _helpers import REPO_ROOT
from vistok.models.segmentors.affinity_segmentor import AffinitySegmentor
from vistok.utils.checkpoint import load_checkpoint_file

SCRIPT = f'{REPO_ROOT}/projects/TokenUnify/tools/compare_pretraining.py'


def test_pretrain_finetune_segment_beats_trivial_segmentations(
        tmp_path, monkeypatch):
    initial = {}  # run -> the segmentor's weights at iteration 0
    init_weights = AffinitySegmentor.init_weights

    def recording_init_weights(self):
        init_weights(self)
        run = 'tokenunify' if self.pretrained else 'scratch'
        initial[run] = {k: v.detach().clone()
                        for k, v in self.state_dict().items()}

    monkeypatch.setattr(AffinitySegmentor, 'init_weights',
                        recording_init_weights)
    compare = runpy.run_path(SCRIPT)['compare']
    result = compare(str(tmp_path), pretrain_iters=30, finetune_iters=100)
    print(json.dumps(result, indent=1))
    assert result['pretrain']['pretrain/psnr_all'] > 10
    # one segment for everything / one per z-slice: VOI of several bits
    # (measured 4.6 / 6.1 bits); a tiny EMmamba after 100 fine-tuning
    # iterations reaches ~1.3-1.6 bits
    trivial = min(t['voi'] for t in result['trivial'].values())
    assert trivial > 4.0
    for run in ('scratch', 'tokenunify'):
        metrics = result[run]
        assert set(metrics) >= {'voi', 'voi_split', 'voi_merge', 'arand'}
        assert metrics['voi'] < 0.5 * trivial, (run, metrics)
        assert metrics['arand'] < 0.7, (run, metrics)
    # the fine-tuned run really started from the pre-trained backbone: at
    # iteration 0 every backbone tensor but the 1- vs 3-channel output conv
    # is the pre-training checkpoint's, bit for bit; from scratch none is
    pretrained = load_checkpoint_file(
        tmp_path / 'pretrain' / 'iter_30.pth')['state_dict']
    backbone = {k for k in initial['tokenunify'] if k.startswith('backbone.')}
    head = {'backbone.final_conv.weight', 'backbone.final_conv.bias'}
    assert head < backbone and len(backbone) > 20
    for key in backbone - head:
        assert torch.equal(initial['tokenunify'][key], pretrained[key]), key
        assert not torch.equal(initial['scratch'][key], pretrained[key]), key
    for key in head:
        assert initial['tokenunify'][key].shape != pretrained[key].shape
