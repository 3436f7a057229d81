"""tools/analysis/gpu_selfcheck.py on a machine without CUDA: the CPU
analogues (gloo DDP = one process, RNG restore on resume) run and PASS, the
CUDA-only checks SKIP with the reason, the exit status is 0; and a check
that is shown a broken resume FAILs with exit status 1."""
import re

import pytest
import torch

from _helpers import load_tool

CPU_ANALOGUES = {'ddp-gloo-cpu', 'resume-rng-cpu'}
CUDA_ONLY = {'mamba-selective-scan', 'mamba-causal-conv1d', 'mamba-mixer',
             'amp-fp16-two-optimizers', 'ddp-nccl-2gpu', 'resume-rng-cuda'}
LINE = re.compile(r'^(PASS|FAIL|SKIP) ([\w-]+): (.+)$')

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason='with CUDA the script runs the GPU checks instead')


@pytest.fixture(scope='module')
def selfcheck():
    return load_tool('tools/analysis/gpu_selfcheck.py', 'gpu_selfcheck')


def results(stdout):
    """``{check: (status, message)}`` from the script's check lines."""
    found = {}
    for line in stdout.splitlines():
        match = LINE.match(line)
        if match:
            status, name, message = match.groups()
            assert name not in found, f'{name} reported twice'
            found[name] = (status, message)
    return found


def number_after(text, label):
    return float(re.search(re.escape(label) + r' ([0-9.e+-]+)', text)[1])


def test_cpu_analogues_pass_and_cuda_checks_skip(selfcheck, capsys,
                                                 tmp_path):
    status = selfcheck.main(['--work-dir', str(tmp_path)])
    found = results(capsys.readouterr().out)
    assert set(found) == CPU_ANALOGUES | CUDA_ONLY == set(selfcheck.CHECKS)
    for name in CUDA_ONLY:
        assert found[name] == ('SKIP', 'no CUDA device'), name
    for name in CPU_ANALOGUES:
        assert found[name][0] == 'PASS', found[name]
    assert status == 0
    # the runs happened: the 2-process run's and the resumed run's
    # checkpoints, and the measured numbers in the lines
    assert (tmp_path / 'ddp_cpu' / 'two' / 'iter_3.pth').is_file()
    assert (tmp_path / 'resume_cpu' / 'resumed' / 'iter_4.pth').is_file()
    ddp = found['ddp-gloo-cpu'][1]
    assert number_after(ddp, 'max |dw|') <= 1e-5
    assert number_after(ddp, 'moved the weights by up to') > 1e-4
    resume = found['resume-rng-cpu'][1]
    assert number_after(resume, 'max relative loss difference') == 0
    assert number_after(resume, 'max |dw|') == 0


def test_resume_check_fails_when_the_rng_states_are_not_restored(
        selfcheck, capsys, tmp_path):
    """--drop-rng-state resumes from the checkpoint without its RNG states:
    dropout then draws other masks, which the check must report."""
    status = selfcheck.main(['--checks', 'resume-rng-cpu',
                             '--drop-rng-state', '--work-dir',
                             str(tmp_path)])
    found = results(capsys.readouterr().out)
    assert set(found) == {'resume-rng-cpu'}
    state, message = found['resume-rng-cpu']
    assert state == 'FAIL' and 'without RNG states' in message
    assert number_after(message, 'max relative loss difference') > 1e-4
    assert number_after(message, 'max |dw|') > 0
    assert status == 1
