"""``topk``: ReLU, then each row's k largest entries kept (the top-k activation of k-sparse autoencoders and CSR)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from pyro_ncl.budget import Budget, check_budget, default_anneal_epochs, default_topk
from pyro_ncl.non_negativity import NON_NEGATIVITY


@NON_NEGATIVITY.register("topk")
class TopK(nn.Module):
    """ReLU, then each row's k largest entries kept and the rest set to 0: the top-k activation of k-sparse
    autoencoders and CSR (``--method ncl_topk``), trained end to end; gradients reach the kept entries only. k
    follows ``pyro_ncl.budget.Budget``: from ``--budget-start`` down to ``--topk`` over ``--budget-anneal-epochs`` in
    training, ``--topk`` in evaluation mode. Deterministic: no latent variable, no prior. [N, K] → [N, K]."""

    budgeted = True  # reads the budget settings (``config.BUDGET_SETTINGS``)

    def __init__(self, feature_dim: int, k: int, anneal_epochs: float = 0.0, schedule: str = "linear",
                 start: Optional[int] = None):
        super().__init__()
        self.budget = Budget(feature_dim, check_budget(k, feature_dim, "--topk"), anneal_epochs, schedule, start)

    @classmethod
    def build(cls, feature_dim: int, topk=None, anneal_epochs=None, epochs: int = 1, schedule: str = "linear",
              start: Optional[int] = None) -> "TopK":
        return cls(feature_dim, topk if topk is not None else default_topk(feature_dim),
                   anneal_epochs if anneal_epochs is not None else default_anneal_epochs(epochs), schedule, start)

    def set_progress(self, epochs_done: float) -> None:
        self.budget.set_progress(epochs_done)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        k = self.budget.now(self.training)
        if k >= x.shape[-1]:
            return x
        keep = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, torch.topk(x, k, dim=-1).indices, True)
        return torch.where(keep, x, torch.zeros_like(x))
