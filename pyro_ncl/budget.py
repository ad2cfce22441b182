"""How many entries of z a view keeps: the budget k of the top-k activation and of the budgeted gates, and its
curriculum.

    budget_from_prior(π, K)   k = max(2, round(π·K)) (at most K): a budgeted gate's k is the number of open
                              gates its Bernoulli(π) prior expects (so ``--prior-prob`` sets the budget), at least
                              2;
    default_topk(K)           K/32 rounded, at least 2 (4 of K = 128): the top-k activation's default;
    Budget(K, k, E)           the curriculum: during training k_t falls linearly from K to k over the first E
                              epochs (then stays at k); in evaluation mode k.

k = 1 is refused everywhere: normalize(z ⊙ m) with one kept entry is one-hot whatever z is, and NT-Xent then has no
gradient for the encoder at all.
"""
from __future__ import annotations

import math


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


class Budget:
    """k_t = ⌈K − (K − k) · min(1, epochs done / anneal epochs)⌉ in training (``set_progress``), k in evaluation."""

    def __init__(self, feature_dim: int, k: int, anneal_epochs: float = 0.0):
        if anneal_epochs < 0:
            raise ValueError(f"--budget-anneal-epochs must be >= 0, got {anneal_epochs}")
        self.feature_dim, self.k, self.anneal_epochs = feature_dim, k, anneal_epochs
        self.current_k = k

    def set_progress(self, epochs_done: float) -> None:
        frac = min(1.0, epochs_done / self.anneal_epochs) if self.anneal_epochs > 0 else 1.0
        self.current_k = max(self.k, math.ceil(self.feature_dim - (self.feature_dim - self.k) * frac - 1e-9))

    def now(self, training: bool) -> int:
        """k_t while training, k otherwise."""
        return self.current_k if training else self.k
