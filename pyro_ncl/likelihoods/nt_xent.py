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
