"""The shared shape of a prior over the per-view, per-dimension gate m ∈ {0,1}^K (or its relaxation in (0,1)^K),
and the prior registry.

A prior is a ``GatePrior`` subclass registered by name, with
    ``value_kind``            "hard" (scores {0,1} masks with a pmf) or "soft" (scores relaxed masks with a density);
                              a guide must produce the same kind, or the ELBO compares a pmf with a density;
    ``closed_form_kl``        whether KL(Bernoulli guide ‖ gate_dist) has a closed form;
    ``build(feature_dim, config)``;
    ``sample_globals(device)`` model side: samples any global latents (outside the data plate) → a context;
    ``guide_globals(device)``  guide side: samples the same globals from their variational factors → a context;
    ``gate_dist(context, K, device)`` the conditional prior of one view's gate, batch shape [K];
    ``gate_kl(q_logits, prior_probs)`` the closed-form gate term of a batch's Bernoulli gates, [G, K] → [G]: by
                              default Σ_d KL(Bern(σ(a_gd)) ‖ Bern(p_d)), the exact ELBO term;
    ``mask(value)``           the mask a gate value applies to z (the value itself; σ(y) for a relaxed gate, whose
                              value is the logit y).
A new prior is a module of its own in ``models/``, named as the prior (``--prior bernoulli`` is
``models/bernoulli.py``): one class with ``@PRIORS.register(name)``.
"""
from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn as nn

from pyro_ncl.distributions import bernoulli_kl
from pyro_ncl.registry import Registry

PRIORS: Registry = Registry("prior")


def check_prob(prior_prob: float) -> float:
    if not 0.0 < prior_prob < 1.0:
        raise ValueError(f"--prior-prob must lie in (0, 1), got {prior_prob}")
    return prior_prob


class GatePrior(nn.Module):
    value_kind = "hard"
    closed_form_kl = True

    @classmethod
    def build(cls, feature_dim: int, config) -> "GatePrior":
        return cls(config.prior_prob)

    def sample_globals(self, device):
        return None

    def guide_globals(self, device):
        return None

    def gate_dist(self, context, num_dims: int, device) -> dist.Distribution:
        raise NotImplementedError

    def gate_kl(self, q_logits: torch.Tensor, prior_probs: torch.Tensor) -> torch.Tensor:
        """[G, K] guide logits, prior probabilities [K] (or [G, K]) → [G] Σ_d KL(q_gd ‖ p_d)."""
        return bernoulli_kl(q_logits, prior_probs).sum(-1)

    def mask(self, value: torch.Tensor) -> torch.Tensor:
        """[..., K] gate value → [..., K] mask applied to z."""
        return value
