"""triCL — tri-factor contrastive learning (Zhang, Wang & Wang, NeurIPS 2023): NT-Xent with a learned diagonal
importance matrix S = diag(s), s = softplus(θ) ∈ R^K_{>0}, θ ∈ R^K an ``nn.Parameter`` (θ₀ = 0.1·N(0, 1) from
torch's global RNG), plus a decorrelation penalty.

On normalised views z [2B, K] (rows i and i + B: the two views of image i), N = 2B:

    logits_ij = z_iᵀ diag(s) z_j / τ = (z_i ⊙ s)·z_j / τ        for every anchor i (both views), j ≠ i
    ce        = mean_i −log softmax_{j≠i}(logits_ij) at j = i ± B
    dec       = mean_{d,e} ((ZᵀZ / N − I)²_{de}),  Z = both views stacked [2B, K], normalised, unscaled by s
    loss      = ce + λ_dec · dec

Convention (``symmetric``): the authors' code scales the anchor side of the first view only — their rows of view-1
anchors are (z_i ⊙ s)·z_j / τ, exactly the rows above, while their rows of view-2 anchors are the plain z_i·z_j / τ.
By default every anchor uses the tri-factor similarity, so the logit matrix is symmetric and S is applied once
(not √S on both sides); ``symmetric=False`` reproduces the authors' asymmetric rows. θ is trained here (in the
released code it is missing from the optimiser). Evaluation ranks dimensions by ``importance`` = s (detached).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pyro_ncl.likelihoods import LIKELIHOODS
from pyro_ncl.likelihoods.nt_xent import anchors_of, check_views, mask_own, positive_index
from pyro_ncl.ops import safe_normalize


def decorrelation_penalty(z: torch.Tensor) -> torch.Tensor:
    """z [N, K] → mean over the K×K entries of (zᵀz/N − I)²."""
    n, k = z.shape
    corr = z.T @ z / n
    return (corr - torch.eye(k, dtype=z.dtype, device=z.device)).pow(2).mean()


def tricl_loss(z: torch.Tensor, theta: torch.Tensor, temperature: float, decorrelation: float = 1.0,
               symmetric: bool = True) -> torch.Tensor:
    """z [2B, K], θ [K] → scalar: triCL cross entropy (mean over the 2B views) + decorrelation · penalty."""
    return tricl_per_view(z, theta, temperature, decorrelation, symmetric).mean()


def tricl_per_view(z: torch.Tensor, theta: torch.Tensor, temperature: float, decorrelation: float = 1.0,
                   symmetric: bool = True, rows=None) -> torch.Tensor:
    """z [2B, K] → [R] per anchor view in ``rows`` (default: all 2B): its cross-entropy term + decorrelation ·
    penalty of the whole batch (the penalty is a batch quantity; adding it to every view keeps
    ``tricl_loss == tricl_per_view(...).mean()``)."""
    n_views = z.shape[0]
    check_views(n_views, "triCL")
    zn = safe_normalize(z)
    anchors, rows = anchors_of(zn, rows)
    scale = F.softplus(theta).to(zn.dtype)                             # s [K] on the anchor side
    if not symmetric:                                                  # authors: view-2 anchors unscaled
        scale = torch.where((rows < n_views // 2).unsqueeze(1), scale, 1.0)
    logits = mask_own((anchors * scale) @ zn.T / temperature, rows)
    ce = F.cross_entropy(logits, positive_index(n_views, z.device)[rows], reduction="none")
    if decorrelation == 0:
        return ce
    return ce + decorrelation * decorrelation_penalty(zn)


@LIKELIHOODS.register("tricl")
class TriCL(nn.Module):
    requires_labels = False

    @classmethod
    def build(cls, feature_dim: int, config, num_classes: int) -> "TriCL":
        return cls(feature_dim, config.temperature, config.tricl_decorrelation)

    def __init__(self, feature_dim: int, temperature: float = 0.2, decorrelation: float = 1.0,
                 symmetric: bool = True):
        super().__init__()
        self.theta = nn.Parameter(0.1 * torch.randn(feature_dim))
        self.temperature, self.decorrelation, self.symmetric = temperature, decorrelation, symmetric

    @property
    def importance(self) -> torch.Tensor:
        """[K] s = softplus(θ), detached: rank dimensions by it (descending) for top-k evaluation."""
        return F.softplus(self.theta).detach()

    def forward(self, z: torch.Tensor, labels=None) -> torch.Tensor:
        return tricl_loss(z, self.theta, self.temperature, self.decorrelation, self.symmetric)

    def per_view(self, z: torch.Tensor, labels=None, rows=None) -> torch.Tensor:
        """[R] loss of the anchor views ``rows`` (default all); the mean over all rows is ``forward``."""
        return tricl_per_view(z, self.theta, self.temperature, self.decorrelation, self.symmetric, rows)
