"""Amortized gate guides: q(m_v | h_v) = Π_d Bernoulli(σ(a_vd)) (or its relaxation) with logits a = gate_head(h)
from an MLP shaped like the projector on the backbone features h (detached by default, as the authors do).

``relaxed_st`` (default). The training mask is the hard sample m = 1[a + L > 0], L ~ Logistic(0, 1): *exactly* a
Bernoulli(σ(a)) draw at any gate temperature T. Its gradient is that of the Concrete sample σ((a + L)/T)
(straight-through). With a Bernoulli prior the ELBO's gate term −Σ_d KL(Bern(σ(a_d)) ‖ Bern(π)) is added in closed
form (see ``guides.base``): exact value and gradient. Pushing the straight-through gradient through a sampled
log p − log q instead biases the KL gradient by E[∂σ((a+L)/T)/∂a] / σ'(a) (cosine ≈ 0.95 with the true gradient at
T = 1), and pairing a Bernoulli prior with Pyro's RelaxedBernoulliStraightThrough (a Concrete density at the soft
value) is not an ELBO at all.

``relaxed_soft``. The mask is the Concrete sample itself, m ∈ (0, 1)^K; it is scored by its density, so it pairs
with the relaxed (``concrete``) prior: the ELBO of the relaxed model, estimated by Monte Carlo.
"""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn

from guides.base import GUIDES, GateGuide
from pyro_ncl.batch import EncodedBatch
from pyro_ncl.distributions import StraightThroughBernoulli


@GUIDES.register("relaxed_st")
class AmortizedGate(GateGuide):
    """Hard Bernoulli mask forward, Concrete gradient backward."""

    def posterior(self, logits):
        return StraightThroughBernoulli(logits, self.temperature)


@GUIDES.register("relaxed_soft")
class RelaxedSoftGate(GateGuide):
    """Soft Concrete mask m = σ((a + L)/T) ∈ (0, 1)^K, scored by its density."""

    value_kind = "soft"

    def posterior(self, logits):
        return dist.RelaxedBernoulli(torch.full((), self.temperature, device=logits.device), logits=logits)


@GUIDES.register("none")
class NoGate(nn.Module):
    """The guide of the ungated methods: the model has no latent variable."""

    value_kind = None
    reparameterized = True
    per_view_gate = True
    analytic_kl = True

    @classmethod
    def build(cls, encoder, prior, config):
        return cls()

    def guide(self, batch: EncodedBatch):
        pyro.module("guide", self)
