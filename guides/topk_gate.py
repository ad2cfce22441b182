"""``topk``: each view keeps its k largest entries of z — a point-mass posterior, trained end to end.

q(m_v | x_v) = δ(m_v = t_k(z_v)), t_k(z)_d = 1[z_d is among the k largest entries of z]: an amortised posterior
that puts all its mass on one gate, chosen by value. With a point mass on a discrete space the ELBO is exact to
write: its gate term is KL(δ_m ‖ p) = −log p(m), for the Bernoulli(π) prior −k log π − (K − k) log(1 − π) per view
(``closed_form_kl``) — a constant for fixed k, so it steers nothing and the objective is the NT-Xent of
normalize(z ⊙ m) (gradients reach the kept entries only). A valid ELBO, with no posterior uncertainty: the trained
counterpart of keeping each image's top-k activations after training (``pyro_ncl.posthoc.top_k``).

Curriculum: during training k_t falls linearly from K to ``--topk`` (default K/32 rounded: 4 of 128) over the first
``--topk-anneal-epochs`` epochs (default 40% of the run; then k stays at ``--topk``; in evaluation mode k =
``--topk``). The default gate of ``--method bayesncl`` (see the README's frontier section for the evidence).
"""
from __future__ import annotations

import math
from typing import Optional

import pyro.distributions as dist
import torch

from guides.base import GUIDES, GateGuide

SURE = 30.0  # |logit| of a kept / dropped entry (σ(30) = 1 in float32)


def default_k(feature_dim: int) -> int:
    """K/32 rounded, at least 2: 4 of K = 128 (the setting measured by experiments/frontier.py)."""
    return min(feature_dim, max(2, round(feature_dim / 32)))


@GUIDES.register("topk")
class TopKGate(GateGuide):
    always_closed_form_kl = True  # the gate term is the exact KL of the point mass (closed_form_kl below)

    def __init__(self, backbone_dim, hidden_dim, feature_dim, prior, *, k: int = 4, anneal_epochs: float = 0.0,
                 **kwargs):
        super().__init__(backbone_dim, hidden_dim, feature_dim, prior, **kwargs)
        if not 2 <= k <= feature_dim:  # k = 1: normalize(z ⊙ m) is one-hot, and NT-Xent has no gradient at all
            raise ValueError(f"--topk must lie in [2, --feature-dim {feature_dim}] (one kept entry leaves a one-hot "
                             f"feature with no gradient), got {k}")
        if anneal_epochs < 0:
            raise ValueError(f"--topk-anneal-epochs must be >= 0, got {anneal_epochs}")
        self.head = None  # the gate reads z only
        self.k, self.anneal_epochs, self.feature_dim = k, anneal_epochs, feature_dim
        self.current_k = k

    @classmethod
    def options(cls, config) -> dict:
        k = config.topk if config.topk is not None else default_k(config.feature_dim)
        anneal = config.topk_anneal_epochs if config.topk_anneal_epochs is not None else 0.4 * config.epochs
        return {"k": k, "anneal_epochs": anneal}

    def set_progress(self, epochs_done: float) -> None:
        """The curriculum: k_t = K − (K − k) · min(1, epochs done / anneal epochs), rounded up."""
        frac = min(1.0, epochs_done / self.anneal_epochs) if self.anneal_epochs > 0 else 1.0
        self.current_k = max(self.k, math.ceil(self.feature_dim - (self.feature_dim - self.k) * frac))

    def view_logits(self, h: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """normalised z [N, K] → ±SURE [N, K]: + for the current k largest entries of each row (training: k_t;
        evaluation mode: the final k)."""
        if z is None:
            raise ValueError("the top-k gate reads z: call view_logits/probs/mode with h and z")
        k = self.current_k if self.training else self.k
        keep = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, torch.topk(z, k, dim=-1).indices, True)
        return torch.where(keep, torch.full_like(z, SURE), torch.full_like(z, -SURE)).float()

    def probs(self, h: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """h [N, F], z [N, K] → [N, K] q(m_d = 1 | x) of the point mass: exactly 1 on the kept entries, 0 elsewhere
        (σ(±SURE) would leave 1e-13 on the dropped ones, a slightly different "mean" gate)."""
        return self.mode(h, z)

    def posterior(self, logits):
        return dist.Delta((logits > 0).to(logits.dtype))

    def closed_form_kl(self, logits, prior_probs):
        """[G, K] logits (±SURE) → [G] KL(δ_m ‖ Bernoulli(π)) = −Σ_d [m_d log π_d + (1 − m_d) log(1 − π_d)]."""
        m = (logits > 0).to(logits.dtype)
        pi = torch.as_tensor(prior_probs, dtype=logits.dtype, device=logits.device)
        return -(m * pi.log() + (1 - m) * (-pi).log1p()).sum(-1)
