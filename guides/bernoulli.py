"""``bernoulli``: the exact (unrelaxed) Bernoulli guide, trained with score-function gradients.

m ~ Bernoulli(σ(a)) is not differentiable, so ``TraceGraph_ELBO`` forms REINFORCE terms: ∇ log q(m_v) times the
costs downstream of view v's gate — its own log p − log q and the contrastive factor, which sits outside the data
plate precisely so that this cost includes the cross-view terms. Unbiased, with variance that baselines reduce:
``--baseline decaying`` (a decaying average of the downstream cost) or ``neural`` (a small MLP on the detached
backbone features, fitted by TraceGraph_ELBO's baseline loss).
"""
from __future__ import annotations

import pyro.distributions as dist
import torch.nn as nn

from guides.base import GUIDES, GateGuide
from pyro_ncl.batch import EncodedBatch

BASELINES = ("none", "decaying", "neural")


@GUIDES.register("bernoulli")
class ExactBernoulliGate(GateGuide):
    reparameterized = False

    def __init__(self, backbone_dim: int, hidden_dim: int, feature_dim: int, prior: nn.Module, *,
                 baseline: str = "decaying", baseline_decay: float = 0.9, **kwargs):
        super().__init__(backbone_dim, hidden_dim, feature_dim, prior, **kwargs)
        if baseline not in BASELINES:
            raise ValueError(f"--baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
        self.baseline, self.baseline_decay = baseline, baseline_decay
        width = hidden_dim // 4 or 1
        self.baseline_net = nn.Sequential(nn.Linear(backbone_dim, width), nn.ReLU(),
                                          nn.Linear(width, 1)) if baseline == "neural" else None

    @classmethod
    def options(cls, config) -> dict:
        return {"baseline": config.baseline}

    def posterior(self, logits):
        return dist.Bernoulli(logits=logits)

    def site_infer(self, batch: EncodedBatch):
        if self.baseline == "decaying":
            return {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": self.baseline_decay}}
        if self.baseline == "neural":
            return {"baseline": {"nn_baseline": lambda h: self.baseline_net(h).squeeze(-1),
                                 "nn_baseline_input": batch.h.detach().to(self.baseline_net[0].weight.dtype)}}
        return None
