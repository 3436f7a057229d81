import os
import os.path as osp
import sys
import tempfile

import pytest
from hypothesis import settings

from _helpers import REPO_ROOT

if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
os.environ.setdefault('HF_HUB_OFFLINE', '1')

# Property-based tests (tests/test_properties): reproducible in CI
# (derandomize: the examples are a function of the test alone), bounded
# (each test sets its own max_examples within its share of the suite's
# time), with no example database and no per-example deadline (a loaded CI
# machine is not a failure). Health checks stay on; a test that needs one
# suppressed says why. Hypothesis still caches (unicode tables, constants
# of the code under test) in its storage directory, `./.hypothesis` by
# default: it goes to the temporary directory instead, so a test run writes
# nothing into the repository. Run more examples with
# `pytest --hypothesis-profile=vistok-thorough` (10x as many, random, so
# each run explores new inputs; still no database).
os.environ.setdefault(
    'HYPOTHESIS_STORAGE_DIRECTORY',
    osp.join(tempfile.gettempdir(), f'vistok-hypothesis-{os.getuid()}'))
settings.register_profile('vistok', max_examples=20, deadline=None,
                          derandomize=True, database=None, print_blob=True)
settings.register_profile('vistok-thorough', settings.get_profile('vistok'),
                          max_examples=200, derandomize=False)
settings.load_profile('vistok')


@pytest.fixture(scope='session')
def repo_root():
    return REPO_ROOT
