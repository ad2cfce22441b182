"""``exact_k``: a budgeted Bayesian gate — each view opens exactly k gates, drawn from an exactly-k conditional
Bernoulli posterior amortized from the encoder.

    q(m_v | x_v) ∝ Π_d σ(θ_vd)^{m_vd} (1 − σ(θ_vd))^{1 − m_vd} · 1[Σ_d m_vd = k],   θ_v = z_v / s + head(h_v)

(``pyro_ncl.conditional_bernoulli``), with z the normalised non-negative projector output (the gate's gradient
reaches the encoder through z and h by default; ``--no-gate-grad-to-backbone`` detaches both), s > 0 a learned scale and head the gate MLP on h (its last layer starts at 0, so
the gate starts as a soft top-k of z). The prior is the model's factorised Bernoulli: ``bernoulli`` (one π) or
``beta_bernoulli`` (per-dimension rates ρ_d, inferred). The budget is the prior's: k = max(2, round(π·K)), so
``--prior-prob`` sets how many gates a view opens (π 1/32: 4 of 128), and k falls from K to it over
``--budget-anneal-epochs`` in training (``pyro_ncl.budget``).

ELBO. Every mask of q's support has k ones, so the gate term is exact in closed form:
    KL(q ‖ p) = −H(q) − Σ_d [μ_d log ρ_d + (1 − μ_d) log(1 − ρ_d)]    (μ the marginals, H = log Z − θ·μ),
which for one π is −H(q) − k log π − (K − k) log(1 − π): β · (−H) plus a constant, so β rewards posterior
uncertainty (the prior's π acts through the budget; with ``beta_bernoulli`` its learned rates also decide which
dimensions are used). It enters as a pathwise ``pyro.factor`` (exact value and gradient); the sampled gate site is
masked. The objective is an ELBO of the gated model.

Gradient. The contrastive term E_q[f(m)] gets SIMPLE's estimator (Ahmed et al., ICLR 2023): the exact sample
forward, the gradient of the marginals μ backward. It is biased; ``tests/test_conditional_bernoulli.py`` measures the
bias against the exact gradient on a problem small enough to enumerate. The KL's gradient is exact.

Test time: ``--test-gate mode`` gates with the posterior's mode, the k largest θ_d (the most probable mask);
``mean`` weighs z by the marginals μ. ``probs`` are the marginals, ``entropy`` the exact posterior entropy.
"""
from __future__ import annotations

from typing import Optional

import torch

from guides.base import GUIDES, GateGuide
from guides.budgeted import Budgeted
from pyro_ncl.conditional_bernoulli import ConditionalBernoulli
from pyro_ncl.metrics import EPS as ACTIVE_EPS


@GUIDES.register("exact_k")
class ExactKGate(Budgeted, GateGuide):
    factorised_prior_only = True  # the closed-form KL is that of a product of Bernoulli(ρ_d)

    def __init__(self, backbone_dim, hidden_dim, feature_dim, prior, *, anneal_epochs: float = 0.0,
                 schedule: str = "linear", start: Optional[int] = None, **kwargs):
        super().__init__(backbone_dim, hidden_dim, feature_dim, prior, **kwargs)
        if not getattr(prior, "factorised", True):
            raise ValueError(f"--guide exact_k needs a factorised Bernoulli prior (bernoulli or beta_bernoulli), "
                             f"got {type(prior).__name__}")
        self.init_budget(prior, feature_dim, anneal_epochs, "exact_k", schedule, start)

    def view_logits(self, h: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """h [N, F], normalised z [N, K] → θ [N, K] = z / s + head(h), in fp32."""
        return self.value_input(z) / self.scale() + self.logits(h)

    def posterior(self, logits: torch.Tensor) -> ConditionalBernoulli:
        """[..., K] θ → the exactly-k posterior (k_t in training, k in evaluation mode), event shape [K]."""
        return ConditionalBernoulli(logits, self.budget.now(self.training))

    def gate_distribution(self, logits):
        return self.posterior(logits)

    def closed_form_kl(self, logits, prior_probs, posterior=None):
        """[G, K] θ → [G] KL(q ‖ Π_d Bernoulli(ρ_d)) exactly (see the module docstring), from the gate site's own
        posterior when given (its tables are built once per step)."""
        return (posterior if posterior is not None else self.posterior(logits)).kl_to_bernoulli(prior_probs)

    def gate_stats(self, posterior) -> dict:
        """The posterior's entropy per view (the part of the KL the model learns: for one π the rest,
        −k_t log π − (K − k_t) log(1 − π), is the budget schedule's constant) and the budget k_t."""
        return {"gate_entropy": posterior.entropy().detach().mean(),
                "budget": float(posterior.k)}

    # ---- the guide's answers about its posterior
    def probs(self, h, z=None):
        """[N, K] the marginals μ_d = q(m_d = 1 | x) (Σ_d μ_d = k)."""
        return self.posterior(self.view_logits(h, z)).marginals

    def open_logits(self, h, z=None):
        """[N, K] logit(μ_d), finite (μ clamped to [1e-7, 1 − 1e-7])."""
        return torch.logit(self.probs(h, z).clamp(1e-7, 1 - 1e-7))

    def mode(self, h, z=None):
        """[N, K] the most probable mask: the k largest θ_d."""
        return self.posterior(self.view_logits(h, z)).mode

    def entropy(self, h, z=None):
        """[N] the exact entropy of the exactly-k posterior (nats)."""
        return self.posterior(self.view_logits(h, z)).entropy()

    def answers(self, h, z=None):
        """mode, marginals and entropy from one posterior (one set of tables), and the entropy of the gates on z's
        non-zero entries alone (``ConditionalBernoulli.entropy_within``)."""
        q = self.posterior(self.view_logits(h, z))
        return {"mode": q.mode, "probs": q.marginals, "entropy": q.entropy(),
                "doubt_entropy": q.entropy_within(z.abs() > ACTIVE_EPS)}
