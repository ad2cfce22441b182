"""Sparsifying features after training: the cheapest baselines a trained gate must beat.

Every function takes non-negative features F [N, K] (rows normalised, e.g. NCL's normalize(ReLU(z))) and returns
the sparsified features with their rows normalised again (a row left without any entry becomes zero):
    ``apply_thresholds(F, t)``  zero F_nd < t_d (per-dimension thresholds t [K]);
    ``top_k(F, k)``             keep each row's k largest entries;
and the thresholds are fitted on the training split's features:
    ``quantile_thresholds(F, q)``  t_d = the q-quantile of dimension d's positive entries (q = 0: nothing is
                                   removed but exact zeros);
    ``rate_thresholds(F, rate)``   the smallest t_d that leaves dimension d active on at most a fraction ``rate``
                                   of the rows (dimensions already at or below it keep every entry).
"""
from __future__ import annotations

import math

import torch

from pyro_ncl.ops import safe_normalize

COLUMN_CHUNK = 256  # torch.quantile refuses inputs above 2^24 elements


def _check(F: torch.Tensor) -> None:
    if F.dim() != 2:
        raise ValueError(f"features must be [N, K], got shape {tuple(F.shape)}")
    if (F < 0).any():
        raise ValueError("post-hoc sparsification expects non-negative features (e.g. NCL's), got negative entries")


def quantile_thresholds(F: torch.Tensor, q: float) -> torch.Tensor:
    """[N, K] → [K]: the q-quantile (linear interpolation) of each dimension's positive entries; +inf for a
    dimension without any (it stays inactive)."""
    _check(F)
    if not 0.0 <= q < 1.0:
        raise ValueError(f"quantile q must lie in [0, 1), got {q}")
    out = []
    for start in range(0, F.shape[1], COLUMN_CHUNK):
        block = F[:, start:start + COLUMN_CHUNK].double()
        rows = max(1, (1 << 24) // max(1, block.shape[1]))
        if block.shape[0] > rows:  # quantiles of a random subset of rows when the block is too large
            block = block[torch.randperm(block.shape[0], generator=torch.Generator().manual_seed(0))[:rows]]
        positive = torch.where(block > 0, block, torch.full_like(block, math.nan))
        t = torch.nanquantile(positive, q, dim=0)
        out.append(torch.where(torch.isnan(t), torch.full_like(t, math.inf), t))
    return torch.cat(out).to(F.dtype)


def rate_thresholds(F: torch.Tensor, rate: float) -> torch.Tensor:
    """[N, K] → [K]: per dimension, its (⌊rate·N⌋ + 1)-th largest entry when more than ⌊rate·N⌋ rows are positive
    (entries at or below it are removed, leaving at most ⌊rate·N⌋ rows active), else 0 (nothing removed)."""
    _check(F)
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"rate must lie in (0, 1], got {rate}")
    keep = int(math.floor(rate * F.shape[0]))
    if keep >= F.shape[0]:
        return torch.zeros(F.shape[1], dtype=F.dtype)
    kth = torch.topk(F, keep + 1, dim=0).values[-1]  # [K] the (keep+1)-th largest entry of each column
    # the threshold removes entries ≤ kth: use the next float above it as the "keep ≥ t" bound
    return torch.where(kth > 0, torch.nextafter(kth, torch.full_like(kth, math.inf)), torch.zeros_like(kth))


def apply_thresholds(F: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """[N, K], [K] → [N, K]: entries below their dimension's threshold zeroed, rows normalised again."""
    _check(F)
    if thresholds.shape != (F.shape[1],):
        raise ValueError(f"thresholds must have shape [{F.shape[1]}], got {tuple(thresholds.shape)}")
    return safe_normalize(torch.where(F >= thresholds.to(F), F, torch.zeros_like(F)))


def top_k(F: torch.Tensor, k: int) -> torch.Tensor:
    """[N, K] → [N, K]: each row's k largest entries kept (ties broken by position), rows normalised again."""
    _check(F)
    if not 1 <= k:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, F.shape[1])
    index = torch.topk(F, k, dim=1).indices
    kept = torch.zeros_like(F).scatter_(1, index, F.gather(1, index))
    return safe_normalize(kept)
