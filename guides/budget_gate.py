"""``budget_st``: a relaxed Bernoulli gate budgeted per view — about k gates open, chosen around the view's k-th
largest entry.

    q(m_vd | x_v) = Bernoulli(σ(a_vd)),   a_vd = (z_vd − t_k(z_v)) / s + head(h_v)_d,

with z the normalised non-negative projector output (detached unless ``--gate-grad-to-backbone``), t_k(z_v) the
midpoint of the view's k-th and (k + 1)-th largest entries (so with the head at 0 the mode keeps exactly the top k),
s > 0 a learned scale and head the gate MLP on h (its last layer starts at 0). The prior is Bernoulli(π) with the
budget k = max(2, round(π·K)) (``pyro_ncl.budget``): the prior expects as many open gates as the threshold keeps; k falls
from K over ``--budget-anneal-epochs`` in training, as for ``exact_k``.

ELBO and gradient are those of ``relaxed_st``: the hard sample m = 1[a + L > 0] (exactly Bernoulli(σ(a))), the
closed-form KL Σ_d KL(Bern(σ(a_d)) ‖ Bern(π)) as a pathwise factor (a valid ELBO), and the straight-through
gradient of the Concrete sample σ((a + L)/T) for the contrastive term — biased;
``tests/test_conditional_bernoulli.py`` measures its expectation against the exact gradient on an enumerable
problem. Unlike ``exact_k`` the number of open gates per view varies (its expectation is Σ_d σ(a_d)).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from guides.amortized import AmortizedGate
from guides.base import GUIDES
from pyro_ncl.budget import Budget, budget_from_prior, default_anneal_epochs

SCALE_INIT = 0.05  # s: a difference of 0.05 in the normalised z is one unit of logit


def kth_midpoint(z: torch.Tensor, k: int) -> torch.Tensor:
    """z [N, K] → [N, 1] the midpoint of each row's k-th and (k + 1)-th largest entries (the k-th itself when k = K)."""
    if k >= z.shape[-1]:
        return z.amin(-1, keepdim=True) - 1.0
    top = torch.topk(z, k + 1, dim=-1).values
    return 0.5 * (top[..., k - 1:k] + top[..., k:k + 1])


class Budgeted:
    """What the budgeted gates (``budget_st``, ``exact_k``) share, mixed into a ``GateGuide``: the budget k =
    max(2, round(π·K)) of the prior with its curriculum (``pyro_ncl.budget.Budget``), a learned scale s > 0 of the
    value term z / s, and a gate head whose last layer starts at 0 (so the gate starts from z alone)."""

    def init_budget(self, prior, feature_dim: int, anneal_epochs: float, name: str, schedule: str = "geometric",
                    start: Optional[int] = None) -> None:
        if not hasattr(prior, "prior_prob"):
            raise ValueError(f"--guide {name} takes its budget from a Bernoulli prior's π, got {type(prior).__name__}")
        self.budget = Budget(feature_dim, budget_from_prior(prior.prior_prob, feature_dim), anneal_epochs, schedule,
                             start)
        self.raw_scale = nn.Parameter(torch.tensor(math.log(math.expm1(SCALE_INIT))))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    @classmethod
    def options(cls, config) -> dict:
        anneal = config.budget_anneal_epochs
        return {"anneal_epochs": anneal if anneal is not None else default_anneal_epochs(config.epochs),
                "schedule": config.budget_schedule, "start": config.budget_start}

    @property
    def k(self) -> int:
        """The budget at the end of the curriculum (and at test time)."""
        return self.budget.k

    def set_progress(self, epochs_done: float) -> None:
        self.budget.set_progress(epochs_done)

    def scale(self) -> torch.Tensor:
        """[] s > 0."""
        return nn.functional.softplus(self.raw_scale)

    def value_input(self, z: Optional[torch.Tensor]) -> torch.Tensor:
        """normalised z [N, K] as the gate reads it: detached unless --gate-grad-to-backbone, in fp32."""
        if z is None:
            raise ValueError(f"the {type(self).__name__} gate reads z: call view_logits/probs/mode with h and z")
        return (z.detach() if self.detach_features else z).to(self.raw_scale.dtype)


@GUIDES.register("budget_st")
class BudgetGate(Budgeted, AmortizedGate):

    def __init__(self, backbone_dim, hidden_dim, feature_dim, prior, *, anneal_epochs: float = 0.0,
                 schedule: str = "geometric", start: Optional[int] = None, **kwargs):
        super().__init__(backbone_dim, hidden_dim, feature_dim, prior, **kwargs)
        self.init_budget(prior, feature_dim, anneal_epochs, "budget_st", schedule, start)

    def view_logits(self, h: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """h [N, F], normalised z [N, K] → a [N, K] = (z − t_k(z)) / s + head(h), in fp32."""
        z = self.value_input(z)
        return (z - kth_midpoint(z.detach(), self.budget.now(self.training))) / self.scale() + self.logits(h)
