"""NT-Xent (SimCLR's InfoNCE over 2B views)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pyro_ncl.ops import safe_normalize

from pyro_ncl.likelihoods import LIKELIHOODS


def positive_index(num_views: int, device=None) -> torch.Tensor:
    """[2B] index of each view's positive: i ↔ i + B."""
    half = num_views // 2
    return (torch.arange(num_views, device=device) + half) % num_views


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """z [2B, K] → mean over the 2B views of −log softmax_j≠i(cos(z_i, z_j)/τ) at j = positive(i)."""
    if z.shape[0] < 4 or z.shape[0] % 2:
        raise ValueError(f"NT-Xent needs an even number of at least 4 views (2 per image), got {z.shape[0]}")
    zn = safe_normalize(z)
    logits = zn @ zn.T / temperature
    logits = logits.masked_fill(torch.eye(z.shape[0], dtype=torch.bool, device=z.device), float("-inf"))
    return F.cross_entropy(logits, positive_index(z.shape[0], z.device))


def anchor_rows(num_views: int, rows, device=None) -> torch.Tensor:
    """The anchor rows a per-view loss is asked for: ``rows`` ([R] indices into the 2B views) or all of them."""
    return torch.arange(num_views, device=device) if rows is None else torch.as_tensor(rows, device=device)


def nt_xent_per_view(z: torch.Tensor, temperature: float, rows=None) -> torch.Tensor:
    """z [2B, K] → [R] the NT-Xent term of each anchor view in ``rows`` (default: all 2B), against all other
    views: ``nt_xent(z, τ) == nt_xent_per_view(z, τ).mean()``. Data-parallel training asks each process for its
    own rows of the gathered global batch."""
    if z.shape[0] < 4 or z.shape[0] % 2:
        raise ValueError(f"NT-Xent needs an even number of at least 4 views (2 per image), got {z.shape[0]}")
    rows = anchor_rows(z.shape[0], rows, z.device)
    zn = safe_normalize(z)
    logits = zn[rows] @ zn.T / temperature
    own = torch.zeros_like(logits, dtype=torch.bool)
    own[torch.arange(rows.shape[0], device=z.device), rows] = True
    logits = logits.masked_fill(own, float("-inf"))
    return F.cross_entropy(logits, positive_index(z.shape[0], z.device)[rows], reduction="none")


@LIKELIHOODS.register("nt_xent")
class NTXent(nn.Module):
    requires_labels = False

    @classmethod
    def build(cls, feature_dim: int, config, num_classes: int) -> "NTXent":
        return cls(config.temperature)

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        self.temperature = temperature

    def forward(self, z: torch.Tensor, labels=None) -> torch.Tensor:
        return nt_xent(z, self.temperature)

    def per_view(self, z: torch.Tensor, labels=None, rows=None) -> torch.Tensor:
        """[R] loss of the anchor views ``rows`` (default all); the mean over all rows is ``forward``."""
        return nt_xent_per_view(z, self.temperature, rows)
