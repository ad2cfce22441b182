"""``global``: a non-amortized, per-dimension gate shared by every view (the mean-field ablation).

q(m) = Π_d Bernoulli(σ(φ_d)) with free logits φ ∈ R^K; one straight-through draw per step gates all views.
The gate is a global latent: its KL counts once for the dataset (not once per view), so per view it weighs
β·KL / 2N.
"""
from __future__ import annotations

import pyro
import torch
import torch.nn as nn

from guides.base import GUIDES
from guides.relaxed_st import AmortizedGate
from pyro_ncl.batch import EncodedBatch
from pyro_ncl.scopes import GLOBAL


@GUIDES.register("global")
class GlobalGate(AmortizedGate):
    scope = GLOBAL

    def __init__(self, backbone_dim, hidden_dim, feature_dim, prior, **kwargs):
        super().__init__(backbone_dim, hidden_dim, feature_dim, prior, **kwargs)
        self.gate_logits = nn.Parameter(torch.full((feature_dim,), 2.0))

    def logits(self, h):
        return self.gate_logits.expand(h.shape[0], -1)

    def guide(self, batch: EncodedBatch):
        pyro.module("guide", self)
        self._sample_gate(batch, self.gate_logits)
