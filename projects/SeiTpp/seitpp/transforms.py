"""Token-EDA (SeiT: Park et al., ICCV 2023, arXiv 2303.11114, Sec. 3.2,
"Token augmentation"): augmentations of a stored code grid, in the spirit of
EDA for text — synonym replacement and swapping two regions.

The transforms act on a sample dict of the token datasets
(:class:`vistok.datasets.SeiTTokenDataset`, ``CompactTokenDataset``,
``TokenShardDataset``): ``results['indices']`` is an integer ``(h, w)`` code
grid, a ``torch.Tensor`` or a numpy array; an augmented sample's
``indices`` has the same type, dtype and shape in a new array (the input is
never modified in place); a sample a transform skips is returned as it is.

Randomness comes from the global ``np.random`` — as vistok's image
transforms (:mod:`vistok.datasets.transforms.processing`) — which the
datasets seed per draw (:func:`vistok.datasets.base.apply_pipeline` with a
:class:`~vistok.datasets.SeededIndex`), so an augmented sample is a
function of the draw: the same with 0 or N DataLoader workers and after a
resume. Each transform has **one** explicit per-sample probability
``prob`` (one uniform draw per sample, ``u < prob``), not a probability
nested inside a batch-level choice (the official code's
``transforms.RandomChoice`` over ``nn.Module`` s).

SeiT's recipe is ``RandomChoice{ReplaceSynonym 0.25, SwapCode 0.25,
identity 0.5}`` per sample (naver-ai/seit ``token_transform.py``
``build_token_transform``, ``main_seit.py`` defaults ``--eda-rc-prob 0.25
--eda-sc-prob 0.25 --replace-token-prob 0.25 --token-synonym-thres 5
--swap-token-scale 0.25``): :class:`TokenEDA` reproduces it with its
defaults. (mmcv's ``RandomChoice`` wrapper could express it too, but it
asserts that the float probabilities sum to exactly 1 and builds its
sub-transforms in mmengine's root registry, where these names need the
``vistok.`` prefix.) Two independent ``ReplaceSynonym(prob=0.25)`` and
``SwapCode(prob=0.25)`` in a pipeline are *not* SeiT's recipe: both fire
on 1/16 of the samples.
"""
from typing import Optional, Tuple

import numpy as np
import torch
from mmcv.transforms import BaseTransform

from vistok.registry import TRANSFORMS
from .synonyms import SEIT_SYNONYM_TOP_K, SynonymSpec, load_synonyms

#: SeiT's per-sample probabilities of synonym replacement and swap
#: (``--eda-rc-prob`` / ``--eda-sc-prob``) and per-token replacement
#: probability (``--replace-token-prob``)
SEIT_SYNONYM_PROB = 0.25
SEIT_SWAP_PROB = 0.25
SEIT_TOKEN_PROB = 0.25
#: largest swapped square side as a fraction of the grid's shorter side
#: (``--swap-token-scale``)
SEIT_SWAP_MAX_SCALE = 0.25
#: position draws per swap before it is skipped (the official loop is
#: unbounded)
DEFAULT_MAX_TRIES = 10


def _check_prob(value, name: str) -> float:
    valid = (isinstance(value, (float, int, np.floating, np.integer))
             and not isinstance(value, bool) and 0 <= value <= 1)
    if not valid:
        raise ValueError(f'{name} must be a probability in [0, 1], got '
                         f'{value!r}')
    return float(value)


def _check_int(value, name: str, low: int) -> int:
    if not (isinstance(value, (int, np.integer)) and not isinstance(
            value, bool) and value >= low):
        raise ValueError(f'{name} must be an int >= {low}, got {value!r}')
    return int(value)


def _fires(prob: float) -> bool:
    """One per-sample Bernoulli(``prob``) draw (always one number drawn)."""
    return bool(np.random.random_sample() < prob)


def _get_codes(results: dict, owner: str,
               grid: bool) -> Tuple[np.ndarray, bool]:
    """``(codes as numpy, was a tensor)`` of ``results['indices']``."""
    if 'indices' not in results:
        raise KeyError(f'{owner} needs results[\'indices\'] (a code grid), '
                       f'the sample has keys {sorted(results)}')
    indices = results['indices']
    is_tensor = torch.is_tensor(indices)
    if not (is_tensor or isinstance(indices, np.ndarray)):
        raise TypeError(f'{owner} needs results[\'indices\'] as one tensor '
                        f'or numpy array of codes, got '
                        f'{type(indices).__name__} (multi-level indices are '
                        f'not supported)')
    codes = indices.detach().cpu().numpy() if is_tensor else indices
    if (codes.dtype == np.bool_
            or not np.issubdtype(codes.dtype, np.integer)):
        raise TypeError(f'{owner} needs integer codes in results'
                        f'[\'indices\'], got dtype {indices.dtype}')
    if grid and codes.ndim != 2:
        raise ValueError(f'{owner} needs results[\'indices\'] of shape '
                         f'(h, w), got {tuple(codes.shape)}')
    return codes, is_tensor


def _put_codes(results: dict, codes: np.ndarray, is_tensor: bool) -> dict:
    results['indices'] = torch.from_numpy(codes) if is_tensor else codes
    return results


@TRANSFORMS.register_module()
class ReplaceSynonym(BaseTransform):
    """With probability ``prob`` per sample, replace each code
    independently with probability ``token_prob`` by a uniform choice among
    its first ``top_k`` synonyms (SeiT's ``ReplaceSynonym``; vectorised:
    one uniform and one synonym rank drawn per token, in that order, as two
    ``np.random`` arrays of the grid's shape).

    Args:
        synonyms: the synonym dictionary: a JSON file (SeiT's released
            ``codebook-synonyms.json`` or one written by
            ``projects/SeiTpp/tools/build_synonyms.py``) or the loaded
            mapping; see :func:`~.synonyms.load_synonyms`.
        prob: per-sample probability of applying the transform.
        token_prob: per-token replacement probability (SeiT 0.25).
        top_k: synonyms to choose from (SeiT's ``thres`` = 5).

    Codes outside the dictionary's ``[0, num_codes)`` are a ``ValueError``.
    """

    def __init__(self, synonyms: SynonymSpec, prob: float = SEIT_SYNONYM_PROB,
                 token_prob: float = SEIT_TOKEN_PROB,
                 top_k: int = SEIT_SYNONYM_TOP_K):
        self.prob = _check_prob(prob, 'prob')
        self.token_prob = _check_prob(token_prob, 'token_prob')
        self.top_k = _check_int(top_k, 'top_k', 1)
        self.table = load_synonyms(synonyms, self.top_k)

    @property
    def num_codes(self) -> int:
        return self.table.shape[0]

    def transform(self, results: dict) -> dict:
        codes, is_tensor = _get_codes(results, 'ReplaceSynonym', grid=False)
        if codes.size and (codes.min() < 0 or codes.max() >= self.num_codes):
            raise ValueError(
                f'ReplaceSynonym: results[\'indices\'] has codes in '
                f'[{codes.min()}, {codes.max()}], the synonym dictionary '
                f'covers the {self.num_codes} codes [0, {self.num_codes - 1}]')
        if not _fires(self.prob):
            return results
        replace = np.random.random_sample(codes.shape) < self.token_prob
        rank = np.random.randint(self.top_k, size=codes.shape)
        synonyms = self.table[codes, rank].astype(codes.dtype)
        return _put_codes(results, np.where(replace, synonyms, codes),
                          is_tensor)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(num_codes={self.num_codes}, '
                f'prob={self.prob}, token_prob={self.token_prob}, '
                f'top_k={self.top_k})')


@TRANSFORMS.register_module()
class SwapCode(BaseTransform):
    """With probability ``prob`` per sample, swap the contents of two
    non-overlapping square regions of the code grid, ``num_swaps`` times in
    sequence (each swap on the result of the previous one).

    One swap (naver-ai/seit ``token_transform.py`` ``SwapCode``, with the
    deviations marked):

    1. side ``s = floor(min(h, w) * U(0, max_scale))`` (the official rule);
       ``s = 0``, or no room for two disjoint ``s x s`` squares
       (``h < 2s`` and ``w < 2s``), skips the swap without drawing
       positions;
    2. top-left corners ``(y0, x0)``, ``(y1, x1)`` uniform over all valid
       positions ``[0, h - s] x [0, w - s]`` (the official
       ``randint(0, h - s - 1)`` never picks the last one), redrawn until
       the squares do not overlap, ``|y0 - y1| >= s or |x0 - x1| >= s``
       (the official accepts a Euclidean corner distance ``> s``, which
       lets the squares overlap, so its swap can duplicate and lose codes;
       here the multiset of codes is always kept);
    3. at most ``max_tries`` draws (the official loop has no bound and
       spins forever when no pair fits, e.g. a 2 x 2 grid with a side of
       1 drawn at ``randint(0, 0)``): if none fits, the swap is skipped.

    ``num_swaps`` is honoured (the official stores it but always swaps
    once).

    Args:
        prob: per-sample probability of applying the transform.
        max_scale: largest side as a fraction of the shorter grid side, in
            ``[0, 1]`` (SeiT 0.25).
        num_swaps: swaps per augmented sample (>= 1).
        max_tries: position draws per swap (>= 1).
    """

    def __init__(self, prob: float = SEIT_SWAP_PROB,
                 max_scale: float = SEIT_SWAP_MAX_SCALE, num_swaps: int = 1,
                 max_tries: int = DEFAULT_MAX_TRIES):
        self.prob = _check_prob(prob, 'prob')
        self.max_scale = _check_prob(max_scale, 'max_scale')
        self.num_swaps = _check_int(num_swaps, 'num_swaps', 1)
        self.max_tries = _check_int(max_tries, 'max_tries', 1)

    def draw_swap(self, height: int,
                  width: int) -> Optional[Tuple[int, int, int, int, int]]:
        """``(side, y0, x0, y1, x1)`` of one swap, or None when it is
        skipped (rule in the class docstring)."""
        side = int(min(height, width) * np.random.uniform(0, self.max_scale))
        if side == 0 or (height < 2 * side and width < 2 * side):
            return None
        for _ in range(self.max_tries):
            y0, y1 = np.random.randint(height - side + 1, size=2).tolist()
            x0, x1 = np.random.randint(width - side + 1, size=2).tolist()
            if abs(y0 - y1) >= side or abs(x0 - x1) >= side:
                return side, y0, x0, y1, x1
        return None

    def transform(self, results: dict) -> dict:
        codes, is_tensor = _get_codes(results, 'SwapCode', grid=True)
        if not _fires(self.prob):
            return results
        out = codes.copy()
        for _ in range(self.num_swaps):
            swap = self.draw_swap(*out.shape)
            if swap is None:
                continue
            s, y0, x0, y1, x1 = swap
            first = out[y0:y0 + s, x0:x0 + s].copy()
            out[y0:y0 + s, x0:x0 + s] = out[y1:y1 + s, x1:x1 + s]
            out[y1:y1 + s, x1:x1 + s] = first
        return _put_codes(results, out, is_tensor)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(prob={self.prob}, max_scale='
                f'{self.max_scale}, num_swaps={self.num_swaps}, '
                f'max_tries={self.max_tries})')


@TRANSFORMS.register_module()
class TokenEDA(BaseTransform):
    """SeiT's Token-EDA: per sample, exactly one of synonym replacement
    (probability ``synonym_prob``), region swap (``swap_prob``) or nothing
    (``1 - synonym_prob - swap_prob``), chosen by one uniform draw ``u``:
    ``u < synonym_prob`` replaces, else ``u < synonym_prob + swap_prob``
    swaps. The defaults are SeiT's (``RandomChoice`` 0.25 / 0.25 / 0.5).

    Args:
        synonyms: the synonym dictionary (see :class:`ReplaceSynonym`);
            may be None only when ``synonym_prob`` is 0.
        synonym_prob, swap_prob: per-sample probabilities, each in
            ``[0, 1]``, summing to at most 1.
        token_prob, top_k: :class:`ReplaceSynonym`'s.
        max_scale, num_swaps, max_tries: :class:`SwapCode`'s.
    """

    def __init__(self, synonyms: Optional[SynonymSpec] = None,
                 synonym_prob: float = SEIT_SYNONYM_PROB,
                 swap_prob: float = SEIT_SWAP_PROB,
                 token_prob: float = SEIT_TOKEN_PROB,
                 top_k: int = SEIT_SYNONYM_TOP_K,
                 max_scale: float = SEIT_SWAP_MAX_SCALE, num_swaps: int = 1,
                 max_tries: int = DEFAULT_MAX_TRIES):
        self.synonym_prob = _check_prob(synonym_prob, 'synonym_prob')
        self.swap_prob = _check_prob(swap_prob, 'swap_prob')
        if self.synonym_prob + self.swap_prob > 1:
            raise ValueError(f'synonym_prob + swap_prob must be <= 1, got '
                             f'{synonym_prob} + {swap_prob}')
        if synonyms is None and self.synonym_prob > 0:
            raise ValueError(f'synonym_prob={synonym_prob} needs synonyms '
                             f'(a synonym JSON file or mapping)')
        self.replace = None if synonyms is None else ReplaceSynonym(
            synonyms, prob=1.0, token_prob=token_prob, top_k=top_k)
        self.swap = SwapCode(prob=1.0, max_scale=max_scale,
                             num_swaps=num_swaps, max_tries=max_tries)

    def transform(self, results: dict) -> dict:
        u = np.random.random_sample()
        if u < self.synonym_prob:
            return self.replace(results)
        if u < self.synonym_prob + self.swap_prob:
            return self.swap(results)
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(synonym_prob={self.synonym_prob}, '
                f'swap_prob={self.swap_prob}, replace={self.replace!r}, '
                f'swap={self.swap!r})')
