"""Priors over the per-view, per-dimension gate m ∈ {0,1}^K.

A prior is an ``nn.Module`` with
    ``sample_globals(device)``   model side: samples any global latents (outside the data plate), returns a context;
    ``guide_globals(device)``    guide side: samples the same globals from their variational factors;
    ``gate_dist(context, K, device)``  the conditional prior of one view's gate, batch shape [K];
    ``closed_form_kl``           whether KL(guide ‖ gate_dist) has a closed form for discrete-valued guides.
A new prior is one class here and one ``PRIORS.register`` line; its factory takes ``(feature_dim, config)``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import pyro.distributions as dist

from pyro_ncl.registry import Registry

PRIORS: Registry = Registry("prior")


class GatePrior(nn.Module):
    closed_form_kl = True

    def sample_globals(self, device):
        return None

    def guide_globals(self, device):
        return None

    def gate_dist(self, context, num_dims: int, device) -> dist.Distribution:
        raise NotImplementedError


class BernoulliPrior(GatePrior):
    """m_d ~ Bernoulli(π) independently: the sparse Bernoulli prior of BayesNCL."""

    def __init__(self, prior_prob: float):
        super().__init__()
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"--prior-prob must lie in (0, 1), got {prior_prob}")
        self.prior_prob = prior_prob

    def gate_dist(self, context, num_dims, device):
        return dist.Bernoulli(probs=torch.full((num_dims,), self.prior_prob, device=device))


@PRIORS.register("bernoulli")
def _bernoulli(feature_dim: int, config) -> BernoulliPrior:
    return BernoulliPrior(config.prior_prob)


PRIORS.register("none")(lambda feature_dim, config: None)
