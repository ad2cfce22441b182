"""``relaxed_st``: the amortized relaxed Bernoulli gate (the gate of the authors' presets; the default of
--method bayesncl is ``exact_k``), and ``AmortizedGate``, the class the other straight-through gates extend.

Amortized: q(m_v | h_v) = Π_d Bernoulli(σ(a_vd)) with logits a = gate_head(h) from an MLP shaped like the projector
on the backbone features h (detached in the authors' presets, ``--no-gate-grad-to-backbone``; the command line's
default lets the gate's gradient reach the encoder).

The training mask is the hard sample m = 1[a + L > 0], L ~ Logistic(0, 1): *exactly* a Bernoulli(σ(a)) draw at any
gate temperature T. Its gradient is that of the Concrete sample σ((a + L)/T)
(straight-through: biased, measured against the exact gradient in ``tests/test_conditional_bernoulli.py``). With a
Bernoulli prior the ELBO's gate term −Σ_d KL(Bern(σ(a_d)) ‖ Bern(π)) is added in closed
form (see ``guides.base``): exact value and gradient. Pushing the straight-through gradient through a sampled
log p − log q instead biases the KL gradient by E[∂σ((a+L)/T)/∂a] / σ'(a) (cosine ≈ 0.95 with the true gradient at
T = 1), and pairing a Bernoulli prior with Pyro's RelaxedBernoulliStraightThrough (a Concrete density at the soft
value) is not an ELBO at all.
"""
from __future__ import annotations

from guides.base import GUIDES, GateGuide
from pyro_ncl.distributions import StraightThroughBernoulli


@GUIDES.register("relaxed_st")
class AmortizedGate(GateGuide):
    """Hard Bernoulli mask forward, Concrete gradient backward."""

    def posterior(self, logits):
        return StraightThroughBernoulli(logits, self.temperature)
