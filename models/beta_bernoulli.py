"""``beta_bernoulli``: per-dimension inclusion rates ρ_d ~ Beta(cπ, c(1 − π)), inferred; m_vd | ρ ~ Bernoulli(ρ_d)."""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.base import PRIORS, GatePrior, check_prob


@PRIORS.register("beta_bernoulli")
class BetaBernoulliPrior(GatePrior):
    """ρ_d ~ Beta(cπ, c(1 − π)) (a global, per-dimension inclusion rate), m_vd | ρ ~ Bernoulli(ρ_d).

    The rates are inferred by the same SVI: their guide is Beta(softplus(α_d), softplus(β_d)) (reparameterised,
    site ``inclusion_rate``); the gate's conditional KL given the sampled ρ stays in closed form.
    """

    def __init__(self, prior_prob: float, concentration: float = 2.0, num_dims: int = 1):
        super().__init__()
        self.prior_prob, self.concentration = check_prob(prior_prob), concentration
        init = torch.full((num_dims,), concentration)
        inverse_softplus = lambda x: x + torch.log(-torch.expm1(-x))  # noqa: E731
        self.rate_alpha = nn.Parameter(inverse_softplus(init * prior_prob))
        self.rate_beta = nn.Parameter(inverse_softplus(init * (1 - prior_prob)))

    @classmethod
    def build(cls, feature_dim, config):
        return cls(config.prior_prob, config.beta_concentration, feature_dim)

    def _hyperprior(self) -> dist.Distribution:
        """p(ρ) = Beta(cπ, c(1 − π)) over the inclusion rates, event shape [K]."""
        alpha = torch.full_like(self.rate_alpha, self.concentration * self.prior_prob)
        return dist.Beta(alpha, torch.full_like(self.rate_alpha, self.concentration) - alpha).to_event(1)

    def posterior_rates(self) -> dist.Beta:
        """q(ρ): Beta over the inclusion rates, batch shape [K]."""
        return dist.Beta(F.softplus(self.rate_alpha), F.softplus(self.rate_beta))

    def sample_globals(self, device):
        return pyro.sample("inclusion_rate", self._hyperprior())

    def guide_globals(self, device):
        return pyro.sample("inclusion_rate", self.posterior_rates().to_event(1))

    def gate_dist(self, context, num_dims, device):
        return dist.Bernoulli(probs=context.clamp(1e-6, 1 - 1e-6))
