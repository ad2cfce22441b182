"""Amortized gate guides: q(m_v | h_v) = Π_d Bernoulli(σ(a_vd)) (or its relaxation) with logits a = gate_head(h)
from an MLP shaped like the projector on the backbone features h (detached in the authors' presets,
``--no-gate-grad-to-backbone``; the command line's default lets the gate's gradient reach the encoder).

``relaxed_st`` (the gate of the authors' presets; the default of --method bayesncl is ``exact_k``). The training
mask is the hard sample m = 1[a + L > 0], L ~ Logistic(0, 1): *exactly* a Bernoulli(σ(a)) draw at any gate
temperature T. Its gradient is that of the Concrete sample σ((a + L)/T)
(straight-through: biased, measured against the exact gradient in ``tests/test_conditional_bernoulli.py``). With a
Bernoulli prior the ELBO's gate term −Σ_d KL(Bern(σ(a_d)) ‖ Bern(π)) is added in closed
form (see ``guides.base``): exact value and gradient. Pushing the straight-through gradient through a sampled
log p − log q instead biases the KL gradient by E[∂σ((a+L)/T)/∂a] / σ'(a) (cosine ≈ 0.95 with the true gradient at
T = 1), and pairing a Bernoulli prior with Pyro's RelaxedBernoulliStraightThrough (a Concrete density at the soft
value) is not an ELBO at all.

``relaxed_soft``. The mask is the Concrete sample itself, m = σ(y) ∈ (0, 1)^K with y = (a + L)/T; it pairs with
the relaxed (``concrete``) prior: the ELBO of the relaxed model, estimated by Monte Carlo. The site's value is the
logit y, scored by its logistic density under both (``LogitConcrete``): the KL is that of the masks (σ is monotone),
and float32 stays exact at low T, where σ(y) rounds to 0 or 1. It trains on soft masks; its test-time gate is the
hard mode 1[a > 0] (P(m_d > ½) = σ(a), its ``probs``), so its evaluated features are hard-gated.
"""
from __future__ import annotations

import pyro
import torch.nn as nn
from pyro.infer import TraceGraph_ELBO

from guides.base import GUIDES, GateGuide
from pyro_ncl.batch import EncodedBatch
from pyro_ncl.distributions import LogitConcrete, StraightThroughBernoulli


@GUIDES.register("relaxed_st")
class AmortizedGate(GateGuide):
    """Hard Bernoulli mask forward, Concrete gradient backward."""

    def posterior(self, logits):
        return StraightThroughBernoulli(logits, self.temperature)


@GUIDES.register("relaxed_soft")
class RelaxedSoftGate(GateGuide):
    """Soft Concrete mask m = σ(y) ∈ (0, 1)^K, y = (a + L)/T the site's value, scored in logit space.
    ``probs(h)`` = σ(a) = P(m_d > ½ | h), so ``mode(h)`` = 1[a > 0] is the mask's median."""

    value_kind = "soft"

    def posterior(self, logits):
        return LogitConcrete(self.temperature, logits)

    def mask(self, value):
        return LogitConcrete.mask(value)


@GUIDES.register("none")
class NoGate(nn.Module):
    """The guide of the ungated methods: the model has no latent variable."""

    value_kind = None
    reparameterized = True
    analytic_kl = True

    @classmethod
    def build(cls, encoder, prior, config):
        return cls()

    def make_elbo(self):
        return TraceGraph_ELBO()

    def guide(self, batch: EncodedBatch):
        pyro.module("guide", self)
