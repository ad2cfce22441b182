"""``relaxed_soft``: the amortized gate whose mask is the Concrete sample itself, m = σ(y) ∈ (0, 1)^K with
y = (a + L)/T, L ~ Logistic(0, 1), and a = gate_head(h) as for ``relaxed_st``.

It pairs with the relaxed (``concrete``) prior: the ELBO of the relaxed model, estimated by Monte Carlo. The site's
value is the logit y, scored by its logistic density under both (``LogitConcrete``): the KL is that of the masks
(σ is monotone), and float32 stays exact at low T, where σ(y) rounds to 0 or 1. It trains on soft masks; its
test-time gate is the hard mode 1[a > 0] (P(m_d > ½) = σ(a), its ``probs``), so its evaluated features are
hard-gated.
"""
from __future__ import annotations

from guides.base import GUIDES, GateGuide
from pyro_ncl.distributions import LogitConcrete


@GUIDES.register("relaxed_soft")
class RelaxedSoftGate(GateGuide):
    """Soft Concrete mask m = σ(y) ∈ (0, 1)^K, y = (a + L)/T the site's value, scored in logit space.
    ``probs(h)`` = σ(a) = P(m_d > ½ | h), so ``mode(h)`` = 1[a > 0] is the mask's median."""

    value_kind = "soft"

    def posterior(self, logits):
        return LogitConcrete(self.temperature, logits)

    def mask(self, value):
        return LogitConcrete.mask(value)
