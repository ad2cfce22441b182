"""SimLAP — learning from arbitrary pairs (Wu et al.): supervised; each image of class y1 is paired with a partner
class y2 and contrasted in a gated subspace shared by the two classes.

Per batch of B images (2B views z [2B, K], rows i and i + B the two views of image i; labels y1 [B]):

    y2   = y1[randperm(B)]            partner classes (torch's global RNG, so pyro/torch seeding controls it)
    g    = sigmoid(MLP((E[y1] + E[y2]) / 2)) ∈ (0, 1)^K     per image; E = nn.Embedding(C, embed_dim),
                                                             MLP = Linear(embed_dim, H) · ReLU · Linear(H, K)
    views carry y = cat(y1, y1), y2 = cat(y2, y2), g = cat(g, g)
    l_ij = (z_i ⊙ g_i ⊙ g_i)·z_j / τ          (not row-centred: every term below is invariant to a per-row shift)
    P(i) = {j ≠ i : y_j = y2_i}                positives (always ≥ 1: y2_i is a label present in the batch)
    N(i) = {j : y_j ∉ {y_i, y2_i}}             negatives
    loss_i = (1/|P(i)|) Σ_{p∈P(i)} −log(exp(l_ip) / (exp(l_ip) + Σ_{n∈N(i)} exp(l_in)))
    loss   = mean of loss_i over the anchors with |P(i)| > 0  +  w · mean(g(1 − g))

The per-positive denominator holds that positive and the negatives only (the authors' ``multipos_ce_loss``); the
authors average over all positive pairs of the batch, here per anchor and then over anchors (the likelihood
contract: a mean over views). Their anchors are view 1 against view 2 of all images; here all 2B views are anchors
against all other views. The gate penalty mean g(1 − g) (largest at g = ½, zero at 0/1) pushes gates toward 0/1;
the paper's penalty formula is unpublished and their released code has none.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from pyro_ncl.likelihoods import LIKELIHOODS
from pyro_ncl.ops import safe_normalize


def simlap_pair_masks(labels_views: torch.Tensor, partner_views: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """labels y [N], partner classes y2 [N] of the N views → (positive [N, N], negative [N, N]) boolean masks:
    positive_ij = y_j = y2_i and j ≠ i; negative_ij = y_j ∉ {y_i, y2_i}."""
    y, y2 = labels_views, partner_views
    eye = torch.eye(y.shape[0], dtype=torch.bool, device=y.device)
    positive = (y.unsqueeze(0) == y2.unsqueeze(1)) & ~eye
    negative = (y.unsqueeze(0) != y.unsqueeze(1)) & (y.unsqueeze(0) != y2.unsqueeze(1))
    return positive, negative


def simlap_loss(z: torch.Tensor, labels: torch.Tensor, partner: torch.Tensor, gate: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """z [2B, K], labels y1 [B], partner y2 [B], gate g [B, K] → scalar multi-positive InfoNCE (no gate penalty)."""
    n_views = z.shape[0]
    if n_views != 2 * labels.shape[0]:
        raise ValueError(f"SimLAP expects 2 views per labelled image: {n_views} views for {labels.shape[0]} labels")
    zn = safe_normalize(z)
    g = torch.cat([gate, gate]).to(zn.dtype)
    positive, negative = simlap_pair_masks(torch.cat([labels, labels]), torch.cat([partner, partner]))
    logits = (zn * g * g) @ zn.T / temperature
    # a finite fill (not −inf) keeps the gradient finite for an anchor without negatives (its terms are then 0)
    neg_lse = torch.logsumexp(logits.masked_fill(~negative, torch.finfo(logits.dtype).min), dim=1, keepdim=True)
    terms = torch.logaddexp(logits, neg_lse) - logits                  # −log(e^l_ip / (e^l_ip + Σ_n e^l_in))
    terms = terms.masked_fill(~positive, 0.0)
    n_pos = positive.sum(1)
    has_pos = (n_pos > 0).to(terms.dtype)                             # weights, not a boolean gather: no wait
    per_anchor = terms.sum(1) / n_pos.clamp_min(1)                     # 0 for an anchor without positives
    return (per_anchor * has_pos).sum() / has_pos.sum().clamp_min(1)  # 0 (zero gradient) if no anchor has one


@LIKELIHOODS.register("simlap")
class SimLAP(nn.Module):
    requires_labels = True

    @classmethod
    def build(cls, feature_dim: int, config, num_classes: int) -> "SimLAP":
        return cls(feature_dim, num_classes, config.temperature, config.simlap_gate_penalty,
                   embed_dim=config.hidden_dim, hidden_dim=config.hidden_dim)

    def __init__(self, feature_dim: int, num_classes: int, temperature: float = 0.1, gate_penalty: float = 0.1,
                 embed_dim: int = 512, hidden_dim: int = 512):
        super().__init__()
        self.embedding = nn.Embedding(num_classes, embed_dim)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, feature_dim))
        self.temperature, self.gate_penalty = temperature, gate_penalty

    def gate(self, labels: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
        """y1 [B], y2 [B] → g [B, K] = sigmoid(MLP((E[y1] + E[y2]) / 2))."""
        return torch.sigmoid(self.mlp((self.embedding(labels) + self.embedding(partner)) / 2))

    def forward(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None,
                partner: Optional[torch.Tensor] = None) -> torch.Tensor:
        """z [2B, K], labels [B] (required), partner [B] (default: labels[randperm(B)]) → scalar loss."""
        if labels is None:
            raise ValueError("SimLAP is a supervised likelihood: it needs the batch's class labels (got None)")
        labels = labels.long()
        if partner is None:
            partner = labels[torch.randperm(labels.shape[0], device=labels.device)]
        g = self.gate(labels, partner.long())
        loss = simlap_loss(z, labels, partner.long(), g, self.temperature)
        if self.gate_penalty:
            loss = loss + self.gate_penalty * (g * (1 - g)).mean()
        return loss
