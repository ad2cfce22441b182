"""``deterministic``: the authors' gate, a point estimate that reproduces their loss.

mask = 1[σ(a/T) > 0.5] with the straight-through gradient of σ(a/T) (no sampling), and the Bernoulli KL used as
a penalty with q = σ(a/T) and π clamped to [0.01, 0.99]. The gate site is a (masked) Delta at the mask; the
penalty enters as the guide's ``gate_kl`` factor, so the objective per view is the authors'
NT-Xent(normalize(normalize(z) ⊙ mask)) + λ · mean_views Σ_d KL(q_d ‖ π). Not a posterior: an ablation.

A point estimate: ``probs(h)`` is the trained q = σ(a/T) (the penalty's q), and ``sample_masks`` returns its one
mask, 1[a > 0], for every draw: it has no gate noise.
"""
from __future__ import annotations

import pyro.distributions as dist
import torch

from guides.base import GUIDES, GateGuide

CLAMP = (0.01, 0.99)


@GUIDES.register("deterministic")
class ThresholdGate(GateGuide):
    always_closed_form_kl = True

    def open_logits(self, h, z=None):
        """h [N, F] → [N, K] a/T: the trained q = σ(a/T)."""
        return self.logits(h) / self.temperature

    def sample_masks(self, h, num_samples, z=None):
        """h [N, F] → [S, N, K] the point estimate's mask 1[a > 0], the same for every draw."""
        return self.mode(h).expand(num_samples, *h.shape[:-1], -1)

    def entropy(self, h, z=None):
        """h [N, F] → [N] zeros: a point estimate has no posterior uncertainty."""
        return h.new_zeros(h.shape[:-1])

    def soft(self, logits: torch.Tensor) -> torch.Tensor:
        """[..., K] logits a → σ(a/T)."""
        return torch.sigmoid(logits / self.temperature)

    def posterior(self, logits):
        soft = self.soft(logits)
        hard = (soft > 0.5).to(soft.dtype)
        return dist.Delta(hard + (soft - soft.detach()))

    def closed_form_kl(self, logits, prior_probs, posterior=None):
        """[..., K] → [...] Σ_d KL(q_d ‖ π) with q = σ(a/T) and π each clamped to [0.01, 0.99]."""
        q, pi = self.soft(logits).clamp(*CLAMP), prior_probs.clamp(*CLAMP)
        return (q * (q / pi).log() + (1 - q) * ((1 - q) / (1 - pi)).log()).sum(-1)
