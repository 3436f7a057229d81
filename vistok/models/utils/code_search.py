"""Nearest-code search shared by the quantizers and the token data
preprocessors: bounded memory, fp32, ties to the lowest index.

It lives on the lowest model floor (``vistok.models.utils``) so that parts
on sibling floors (``quantizers``, ``data_preprocessors``) can share it.
"""
import torch

# distance-matrix elements scored at once by the nearest-code search (16 MB
# in fp32): bounded memory, and large enough for an efficient GEMM.
SEARCH_BLOCK_ELEMENTS = 2**22
# the arg-max over K codes runs in two levels, over groups of this many codes
SEARCH_GROUP = 128


def _first_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(-1)`` of a ``(R, K)`` block, in two levels: the
    vectorised ``amax`` over groups of ``SEARCH_GROUP`` codes, then the arg-max
    of the winning group (a single fused arg-max reduction over ``K`` is ~3x
    slower on CPU and costs more than the GEMM). Ties go to the lowest index,
    as with ``argmax``."""
    rows, k = scores.shape
    if k % SEARCH_GROUP or k < 2 * SEARCH_GROUP:
        return scores.argmax(-1)
    groups = scores.view(rows, k // SEARCH_GROUP, SEARCH_GROUP)
    best_group = groups.amax(-1).argmax(-1)
    within = groups[torch.arange(rows, device=scores.device),
                    best_group].argmax(-1)
    return best_group * SEARCH_GROUP + within


def nearest_code(flat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Index of the nearest row of ``codes`` ``(K, D)`` for each row of
    ``flat`` ``(N, D)``, in fp32 even under autocast, without gradient.

    ``argmin_j ‖z - e_j‖² = argmax_j (2 z·e_j - ‖e_j‖²)`` (``‖z‖²`` is the
    same for every code), scored by one GEMM per block of rows with the bias
    folded in as an extra dimension (``[2z, -1] · [e, ‖e‖²]``), into a reused
    buffer: never ``cdist`` and never the whole ``N × K`` matrix, which can
    take gigabytes. Ties go to the lowest index.
    """
    with torch.no_grad(), torch.autocast(flat.device.type, enabled=False):
        flat, codes = flat.float(), codes.float()
        lhs = torch.cat([2 * flat, -flat.new_ones(len(flat), 1)], dim=1)
        rhs = torch.cat([codes, codes.pow(2).sum(-1, keepdim=True)], dim=1)
        rhs = rhs.t().contiguous()
        rows = max(1, SEARCH_BLOCK_ELEMENTS // max(len(codes), 1))
        indices = torch.empty(len(flat), dtype=torch.long, device=flat.device)
        scores = flat.new_empty(min(rows, len(flat)), len(codes))
        for start in range(0, len(flat), rows):
            block = lhs[start:start + rows]
            out = scores[:len(block)]
            torch.mm(block, rhs, out=out)
            indices[start:start + len(block)] = _first_argmax(out)
        return indices
