"""NT-Xent (SimCLR's InfoNCE over 2B views), and the helpers every per-view likelihood shares."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from pyro_ncl.ops import safe_normalize

from pyro_ncl.likelihoods import LIKELIHOODS


def check_views(num_views: int, name: str) -> None:
    """Refuse a batch that is not an even number of at least 4 views (2 per image)."""
    if num_views < 4 or num_views % 2:
        raise ValueError(f"{name} needs an even number of at least 4 views (2 per image), got {num_views}")


def positive_index(num_views: int, device=None) -> torch.Tensor:
    """[2B] index of each view's positive: i ↔ i + B."""
    half = num_views // 2
    return (torch.arange(num_views, device=device) + half) % num_views


def anchor_rows(num_views: int, rows, device=None) -> torch.Tensor:
    """The anchor rows a per-view loss is asked for: ``rows`` ([R] indices into the 2B views) or all of them."""
    return torch.arange(num_views, device=device) if rows is None else torch.as_tensor(rows, device=device)


def anchors_of(zn: torch.Tensor, rows) -> Tuple[torch.Tensor, torch.Tensor]:
    """zn [2B, K], rows ([R] indices or None: all) → (anchor views [R, K], their rows [R])."""
    index = anchor_rows(zn.shape[0], rows, zn.device)
    return (zn if rows is None else zn[index]), index


def column_is(rows: torch.Tensor, num_views: int) -> torch.Tensor:
    """rows [R] (indices into the 2B views) → [R, 2B] boolean, True at column rows[r] of row r (a comparison on
    the device: no index write, no host value)."""
    return rows.unsqueeze(1) == torch.arange(num_views, device=rows.device)


def mask_own(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """logits [R, 2B] of the anchor views ``rows`` [R] → the same with each anchor's own column at −inf."""
    return logits.masked_fill(column_is(rows, logits.shape[1]), float("-inf"))


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """z [2B, K] → mean over the 2B views of −log softmax_j≠i(cos(z_i, z_j)/τ) at j = positive(i)."""
    return nt_xent_per_view(z, temperature).mean()


def nt_xent_per_view(z: torch.Tensor, temperature: float, rows=None) -> torch.Tensor:
    """z [2B, K] → [R] the NT-Xent term of each anchor view in ``rows`` (default: all 2B), against all other
    views: ``nt_xent(z, τ) == nt_xent_per_view(z, τ).mean()``. Data-parallel training asks each process for its
    own rows of the gathered global batch."""
    check_views(z.shape[0], "NT-Xent")
    zn = safe_normalize(z)
    anchors, rows = anchors_of(zn, rows)
    logits = mask_own(anchors @ zn.T / temperature, rows)
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
