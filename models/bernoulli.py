"""``bernoulli``: m_d ~ Bernoulli(π) independently, the sparse Bernoulli prior of BayesNCL."""
from __future__ import annotations

import pyro.distributions as dist
import torch

from models.base import PRIORS, GatePrior, check_prob


@PRIORS.register("bernoulli")
class BernoulliPrior(GatePrior):
    """m_d ~ Bernoulli(π) independently: the sparse Bernoulli prior of BayesNCL."""

    def __init__(self, prior_prob: float):
        super().__init__()
        self.prior_prob = check_prob(prior_prob)

    def gate_dist(self, context, num_dims, device):
        return dist.Bernoulli(probs=torch.full((num_dims,), self.prior_prob, device=device))
