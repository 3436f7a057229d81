"""Random-state helpers for exactly reproducible, resumable training."""
import contextlib
import random

import numpy as np
import torch


def get_rng_state() -> dict:
    """Python, numpy and torch (CPU and, if present, CUDA) RNG states in
    types that ``torch.load(weights_only=True)`` accepts."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = dict(
        python=dict(version=version, internal=list(internal), gauss=gauss),
        numpy=dict(name=np_name,
                   keys=torch.from_numpy(np_keys.astype(np.int64)),
                   pos=int(np_pos), has_gauss=int(np_has_gauss),
                   cached_gaussian=float(np_gauss)),
        torch=torch.get_rng_state(),
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`get_rng_state`."""
    py = state['python']
    random.setstate((py['version'], tuple(py['internal']), py['gauss']))
    npst = state['numpy']
    np.random.set_state((npst['name'], npst['keys'].numpy().astype(np.uint32),
                         npst['pos'], npst['has_gauss'],
                         npst['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


@contextlib.contextmanager
def seeded_rng(seed: int):
    """Run a block with python / numpy / torch global RNGs seeded by ``seed``
    and restore the previous states afterwards, so data augmentation can be a
    deterministic function of a sample's seed without disturbing the
    model's random stream."""
    saved = get_rng_state()
    seed = int(seed) % (2**32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        set_rng_state(saved)
