"""``concrete``: the Concrete (relaxed Bernoulli) prior on relaxed masks, for guides whose mask is soft
(``relaxed_soft``)."""
from __future__ import annotations

import math

import torch

from models.base import PRIORS, GatePrior, check_prob
from pyro_ncl.distributions import LogitConcrete


@PRIORS.register("concrete")
class ConcretePrior(GatePrior):
    """m_d = σ(y_d), y_d = (logit π + L)/T_prior, L ~ Logistic(0, 1): the Concrete (RelaxedBernoulli(T_prior, π))
    prior on relaxed masks, for guides whose mask is relaxed (soft). The site's value is the logit y, scored by the
    logistic density of ``LogitConcrete`` (the KL to the guide is that of the masks in (0, 1): σ is monotone)."""

    value_kind = "soft"
    closed_form_kl = False

    def __init__(self, prior_prob: float, temperature: float):
        super().__init__()
        self.prior_prob, self.temperature = check_prob(prior_prob), temperature

    @classmethod
    def build(cls, feature_dim, config):
        return cls(config.prior_prob, config.gate_temperature)

    def gate_dist(self, context, num_dims, device):
        logits = torch.full((num_dims,), math.log(self.prior_prob / (1 - self.prior_prob)), device=device)
        return LogitConcrete(self.temperature, logits)

    def mask(self, value):
        return LogitConcrete.mask(value)
