"""How many entries of z a view keeps: the budget k of the top-k activation and of the budgeted gates, and its
curriculum.

    budget_from_prior(π, K)   k = max(2, round(π·K)) (at most K): a budgeted gate's k is the number of open
                              gates its Bernoulli(π) prior expects (so ``--prior-prob`` sets the budget), at least
                              2;
    default_topk(K)           K/32 rounded, at least 2 (4 of K = 128): the top-k activation's default;
    default_budget_start(K, k)  where the curriculum starts: min(K, max(128, 3k)): every dimension up to K = 128
                              (the anneal chosen on Fashion-MNIST's validation split), 3k at large K, where a wider
                              budget would cost the exactly-k gate far more than its final one;
    SCHEDULES                 how k_t falls from the start to k as the fraction f of the anneal done grows:
                              ``linear`` start − (start − k)·f (the default), ``geometric`` start · (k / start)^f,
                              each rounded up;
    Budget(K, k, E, schedule, start)
                              the curriculum: during training k_t falls from ``start`` to k over the first E epochs
                              (then stays at k); in evaluation mode k.

The exactly-k gate's work per view is O(K · min(k_t, K − k_t)), so the curriculum sets what the anneal costs: at
K = 2048, k = 64, a step during a linear fall from K costs on average about 10× a step at the final budget, the
default (linear from 3k = 192) under 2× (``experiments/bench_gate.py`` measures it). At K = 128 the default is the
fall from K: on Fashion-MNIST's validation split a geometric fall from 64 cost 1.3 points of kNN and 6 active
dimensions, paired by seed (docs/results/learning_curve.md).

k = 1 is refused everywhere: normalize(z ⊙ m) with one kept entry is one-hot whatever z is, and NT-Xent then has no
gradient for the encoder at all.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

from pyro_ncl.registry import Registry

SCHEDULES: Registry[Callable[[int, int, float], float]] = Registry("budget schedule")
SCHEDULES.register("geometric")(lambda start, k, f: start * (k / start) ** f)
SCHEDULES.register("linear")(lambda start, k, f: start - (start - k) * f)


def check_budget(k: int, feature_dim: int, what: str) -> int:
    if not 2 <= k <= feature_dim:
        raise ValueError(f"{what} must lie in [2, --feature-dim {feature_dim}] (one kept entry leaves a one-hot "
                         f"feature with no gradient), got {k}")
    return k


def budget_from_prior(prior_prob: float, feature_dim: int) -> int:
    """k = max(2, round(π·K)), at most K (K ≥ 2; the KL is always that of the prior's own π)."""
    if feature_dim < 2:
        raise ValueError(f"a budgeted gate needs --feature-dim of at least 2, got {feature_dim}")
    return min(feature_dim, max(2, round(prior_prob * feature_dim)))


def default_topk(feature_dim: int) -> int:
    """K/32 rounded, at least 2 (and at most K)."""
    return min(feature_dim, max(2, round(feature_dim / 32)))


def default_anneal_epochs(epochs: int) -> float:
    """40% of the run."""
    return 0.4 * epochs


def default_budget_start(feature_dim: int, k: int) -> int:
    """min(K, max(128, 3k))."""
    return min(feature_dim, max(128, 3 * k))


class Budget:
    """k_t = ⌈schedule(start, k, min(1, epochs done / anneal epochs))⌉ in training (``set_progress``; k when
    ``anneal_epochs`` is 0), k in evaluation."""

    def __init__(self, feature_dim: int, k: int, anneal_epochs: float = 0.0, schedule: str = "linear",
                 start: Optional[int] = None):
        if anneal_epochs < 0:
            raise ValueError(f"--budget-anneal-epochs must be >= 0, got {anneal_epochs}")
        start = default_budget_start(feature_dim, k) if start is None else start
        if not k <= start <= feature_dim:
            raise ValueError(f"--budget-start must lie in [{k}, --feature-dim {feature_dim}] (from the final budget "
                             f"k = {k} to every dimension), got {start}")
        self.feature_dim, self.k, self.anneal_epochs, self.start = feature_dim, k, anneal_epochs, start
        self.schedule = SCHEDULES[schedule]
        self.current_k = k  # until the trainer sets the progress

    def at(self, frac: float) -> int:
        """k_t when the fraction ``frac`` of the anneal is done."""
        frac = min(1.0, max(0.0, frac))
        return min(self.start, max(self.k, math.ceil(self.schedule(self.start, self.k, frac) - 1e-9)))

    def set_progress(self, epochs_done: float) -> None:
        self.current_k = self.at(epochs_done / self.anneal_epochs if self.anneal_epochs > 0 else 1.0)

    def now(self, training: bool) -> int:
        """k_t while training, k otherwise."""
        return self.current_k if training else self.k
