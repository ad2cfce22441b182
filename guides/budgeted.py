"""The mixin of the budgeted gates (``budget_st``, ``exact_k``); a helper module: it registers no guide."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from pyro_ncl.budget import Budget, budget_from_prior, default_anneal_epochs

SCALE_INIT = 0.05  # s: a difference of 0.05 in the normalised z is one unit of logit


class Budgeted:
    """What the budgeted gates (``budget_st``, ``exact_k``) share, mixed into a ``GateGuide``: the budget k =
    max(2, round(π·K)) of the prior with its curriculum (``pyro_ncl.budget.Budget``), a learned scale s > 0 of the
    value term z / s, and a gate head whose last layer starts at 0 (so the gate starts from z alone)."""

    budgeted = True  # reads the budget settings (``config.BUDGET_SETTINGS``)

    def init_budget(self, prior, feature_dim: int, anneal_epochs: float, name: str, schedule: str = "linear",
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
