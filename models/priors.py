"""Priors over the per-view, per-dimension gate m ∈ {0,1}^K (or its relaxation in (0,1)^K).

A prior is a ``GatePrior`` subclass registered by name, with
    ``value_kind``            "hard" (scores {0,1} masks with a pmf) or "soft" (scores relaxed masks with a density);
                              a guide must produce the same kind, or the ELBO compares a pmf with a density;
    ``closed_form_kl``        whether KL(Bernoulli guide ‖ gate_dist) has a closed form;
    ``build(feature_dim, config)``;
    ``sample_globals(device)`` model side: samples any global latents (outside the data plate) → a context;
    ``guide_globals(device)``  guide side: samples the same globals from their variational factors → a context;
    ``gate_dist(context, K, device)`` the conditional prior of one view's gate, batch shape [K].
A new prior is one class here with ``@PRIORS.register(name)``.
"""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
import torch.nn.functional as F

from pyro_ncl.registry import Registry

PRIORS: Registry = Registry("prior")


def _check_prob(prior_prob: float) -> float:
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


@PRIORS.register("none")
class NoPrior:
    """No gate: the ungated methods (CL, NCL, triCL, SimLAP, BCL)."""

    value_kind = None

    @classmethod
    def build(cls, feature_dim, config):
        return None


@PRIORS.register("bernoulli")
class BernoulliPrior(GatePrior):
    """m_d ~ Bernoulli(π) independently: the sparse Bernoulli prior of BayesNCL."""

    def __init__(self, prior_prob: float):
        super().__init__()
        self.prior_prob = _check_prob(prior_prob)

    def gate_dist(self, context, num_dims, device):
        return dist.Bernoulli(probs=torch.full((num_dims,), self.prior_prob, device=device))


@PRIORS.register("beta_bernoulli")
class BetaBernoulliPrior(GatePrior):
    """ρ_d ~ Beta(cπ, c(1 − π)) (a global, per-dimension inclusion rate), m_vd | ρ ~ Bernoulli(ρ_d).

    The rates are inferred by the same SVI: their guide is Beta(softplus(α_d), softplus(β_d)) (reparameterised,
    site ``inclusion_rate``); the gate's conditional KL given the sampled ρ stays in closed form.
    """

    def __init__(self, prior_prob: float, concentration: float = 2.0, num_dims: int = 1):
        super().__init__()
        self.prior_prob, self.concentration = _check_prob(prior_prob), concentration
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


@PRIORS.register("concrete")
class ConcretePrior(GatePrior):
    """m_d ~ RelaxedBernoulli(T_prior, π): a density on (0, 1)^K, for guides whose mask is relaxed (soft)."""

    value_kind = "soft"
    closed_form_kl = False

    def __init__(self, prior_prob: float, temperature: float):
        super().__init__()
        self.prior_prob, self.temperature = _check_prob(prior_prob), temperature

    @classmethod
    def build(cls, feature_dim, config):
        return cls(config.prior_prob, config.gate_temperature)

    def gate_dist(self, context, num_dims, device):
        probs = torch.full((num_dims,), self.prior_prob, device=device)
        return dist.RelaxedBernoulli(torch.full((), self.temperature, device=device), probs=probs)
