"""BCL — Bayesian self-supervised contrastive loss (Liu & Wang): NT-Xent with importance-weighted negatives.

For anchor view i of the 2B views (positive p(i) = i ± B, negatives N(i) = every view except i and p(i),
n = |N(i)| = 2B − 2), with s_ij = exp(z_i·z_j / t) on normalised z:

    û_ij  = #{k ∈ N(i) : s_ik ≤ s_ij} / n            empirical CDF within the row: rank with ties counted "≤"
                                                     (so û ∈ {1/n, …, 1}; the largest s of the row gets 1),
                                                     as the authors' ``(X <= hatx).sum(-1) / n``
    a = (1 − 2α)(τ⁻ − τ⁺) + 1e-3,  b = 2(ατ⁻ + (1 − α)τ⁺),  τ⁻ = 1 − τ⁺
    F = (−b + √(b² + 4aû)) / 2a  (computed as the identical 2û / (b + √(b² + 4aû)), stable for a → 0)
    φ1 = 2(1 − F),  φ2 = 2F
    x_tn = αφ1 + (1 − α)φ2,  x_fn = (1 − α)φ1 + αφ2
    x_htn = (α(1 − β)φ1 + (1 − α)βφ2) / (α(1 − β) + (1 − α)β)
    ω_ij = x_htn / (τ⁻ x_tn + τ⁺ x_fn)
    loss_i = −log(s_ip / (s_ip + Σ_{j∈N(i)} ω_ij s_ij)),   loss = mean over the 2B views.

Conventions: ω is computed without gradient (it is a function of the integer ranks only, so it carries none in
the authors' code either). x_htn's denominator follows METHODS.md exactly; the authors' code adds 1e-3 to it,
which scales every ω by 1/(1 + 1e-3/(α(1−β)+(1−α)β)). β = 0.5 gives x_htn = x_tn (unbiased weights); α = β = 0.5
gives x_tn = x_fn = x_htn = 1, so ω ≡ 1 and BCL is exactly NT-Xent.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from pyro_ncl.likelihoods import LIKELIHOODS
from pyro_ncl.likelihoods.nt_xent import anchors_of, check_views, column_is, positive_index
from pyro_ncl.ops import safe_normalize


def bcl_weights(u: torch.Tensor, alpha: float, beta: float, class_prior: float) -> torch.Tensor:
    """Importance weights ω (same shape as u) of negatives whose empirical CDF value within their row is u ∈ [0, 1]."""
    tau_p = float(class_prior)
    if not 0.0 < tau_p < 1.0:
        raise ValueError(f"BCL class prior τ⁺ must lie in (0, 1), got {class_prior}")
    hard_norm = alpha * (1 - beta) + (1 - alpha) * beta
    if hard_norm <= 0:
        raise ValueError(f"BCL: α(1−β) + (1−α)β must be > 0, got α={alpha}, β={beta}")
    tau_m = 1.0 - tau_p
    a = (1 - 2 * alpha) * (tau_m - tau_p) + 1e-3
    b = 2 * (alpha * tau_m + (1 - alpha) * tau_p)
    u = u.detach()
    cdf = 2 * u / (b + torch.sqrt((b * b + 4 * a * u).clamp_min(0.0)))  # = (−b + √(b² + 4aû)) / 2a
    phi1, phi2 = 2 * (1 - cdf), 2 * cdf
    x_tn = alpha * phi1 + (1 - alpha) * phi2
    x_fn = (1 - alpha) * phi1 + alpha * phi2
    x_htn = (alpha * (1 - beta) * phi1 + (1 - alpha) * beta * phi2) / hard_norm
    return x_htn / (tau_m * x_tn + tau_p * x_fn)


def row_ecdf(x: torch.Tensor, count: Optional[int] = None) -> torch.Tensor:
    """x [R, n] → û [R, n], û_ij = #{k : x_ik ≤ x_ij} / count (no gradient; ``count`` defaults to n). Entries at
    +inf are never counted for a finite x_ij: they mark columns left out of a row."""
    x = x.detach()
    sorted_x = x.sort(dim=-1).values.contiguous()
    return torch.searchsorted(sorted_x, x.contiguous(), right=True).to(x.dtype) / (count or x.shape[-1])


def bcl_loss(z: torch.Tensor, temperature: float, alpha: float, beta: float, class_prior: float) -> torch.Tensor:
    """z [2B, K] (rows i and i + B: the two views of image i) → scalar BCL loss, mean over the 2B views."""
    return bcl_per_view(z, temperature, alpha, beta, class_prior).mean()


def bcl_per_view(z: torch.Tensor, temperature: float, alpha: float, beta: float, class_prior: float,
                 rows=None) -> torch.Tensor:
    """z [2B, K] → [R] the BCL term of each anchor view in ``rows`` (default: all 2B) against all other views
    (every term depends on its own row of similarities only, so a subset of rows is exact). The negatives stay in
    their [R, 2B] row with the anchor's own and positive columns masked (no boolean gather: nothing waits for
    the device)."""
    n_views = z.shape[0]
    check_views(n_views, "BCL")
    zn = safe_normalize(z)
    anchors, rows = anchors_of(zn, rows)
    logits = anchors @ zn.T / temperature                              # log s_ij, [R, 2B]
    pos_idx = positive_index(n_views, z.device)[rows]
    not_negative = column_is(rows, n_views) | column_is(pos_idx, n_views)
    pos = logits.gather(1, pos_idx.unsqueeze(1)).squeeze(1)            # [R]
    # ranks of log s equal ranks of s (exp is increasing) among the n = 2B − 2 negatives; weights carry no gradient
    ecdf = row_ecdf(logits.masked_fill(not_negative, float("inf")), n_views - 2)
    omega = bcl_weights(ecdf.clamp(max=1.0), alpha, beta, class_prior)  # (masked columns: values unused)
    # −log(s_p / (s_p + Σ ω s_n)) = logsumexp([log s_p, log s_n + log ω]) − log s_p  (ω = 0 ⇒ −inf, dropped)
    neg = (logits + torch.log(omega)).masked_fill(not_negative, float("-inf"))
    return torch.logsumexp(torch.cat([pos.unsqueeze(1), neg], dim=1), dim=1) - pos


@LIKELIHOODS.register("bcl")
class BCL(nn.Module):
    requires_labels = False

    @classmethod
    def build(cls, feature_dim: int, config, num_classes: int) -> "BCL":
        return cls(config.temperature, config.bcl_alpha, config.bcl_beta, config.bcl_class_prior)

    def __init__(self, temperature: float = 0.5, alpha: float = 0.9, beta: float = 0.5, class_prior: float = 0.1):
        super().__init__()
        bcl_weights(torch.zeros(1), alpha, beta, class_prior)          # validate the settings once
        self.temperature, self.alpha, self.beta, self.class_prior = temperature, alpha, beta, class_prior

    def forward(self, z: torch.Tensor, labels=None) -> torch.Tensor:
        return bcl_loss(z, self.temperature, self.alpha, self.beta, self.class_prior)

    def per_view(self, z: torch.Tensor, labels=None, rows=None) -> torch.Tensor:
        """[R] loss of the anchor views ``rows`` (default all); the mean over all rows is ``forward``."""
        return bcl_per_view(z, self.temperature, self.alpha, self.beta, self.class_prior, rows)
