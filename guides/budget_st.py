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

from typing import Optional

import torch

from guides.base import GUIDES
from guides.budgeted import Budgeted
from guides.relaxed_st import AmortizedGate


def kth_midpoint(z: torch.Tensor, k: int) -> torch.Tensor:
    """z [N, K] → [N, 1] the midpoint of each row's k-th and (k + 1)-th largest entries (the k-th itself when k = K)."""
    if k >= z.shape[-1]:
        return z.amin(-1, keepdim=True) - 1.0
    top = torch.topk(z, k + 1, dim=-1).values
    return 0.5 * (top[..., k - 1:k] + top[..., k:k + 1])


@GUIDES.register("budget_st")
class BudgetGate(Budgeted, AmortizedGate):

    def __init__(self, backbone_dim, hidden_dim, feature_dim, prior, *, anneal_epochs: float = 0.0,
                 schedule: str = "linear", start: Optional[int] = None, **kwargs):
        super().__init__(backbone_dim, hidden_dim, feature_dim, prior, **kwargs)
        self.init_budget(prior, feature_dim, anneal_epochs, "budget_st", schedule, start)

    def view_logits(self, h: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """h [N, F], normalised z [N, K] → a [N, K] = (z − t_k(z)) / s + head(h), in fp32."""
        z = self.value_input(z)
        return (z - kth_midpoint(z.detach(), self.budget.now(self.training))) / self.scale() + self.logits(h)
