"""Small tensor operations shared by the model, the likelihoods and evaluation."""
from __future__ import annotations

import torch


def safe_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Rows of x [..., K] scaled to unit norm; a row of norm ≤ eps (every gate closed, or every open dimension of
    a non-negative z at zero) becomes exactly zero with zero gradient, instead of the 1/eps gradient of
    ``F.normalize`` that overflows through a straight-through gate."""
    sq = x.pow(2).sum(-1, keepdim=True)
    inv = torch.where(sq > eps * eps, sq.clamp_min(eps * eps).rsqrt(), torch.zeros_like(sq))
    return x * inv
