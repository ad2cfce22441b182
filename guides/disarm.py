"""``disarm``: the exact Bernoulli guide q(m_v | h_v) = Π_d Bernoulli(σ(a_vd)) (hard masks, no relaxation), trained
with DisARM gradients (``pyro_ncl.disarm``: Dong, Mnih & Tucker 2020).

The gate term of the ELBO is the closed-form KL (a pathwise ``pyro.factor``, as for ``relaxed_st``); the
contrastive term E_q[f(m)], which couples every view of the batch, gets the DisARM gradient from the likelihood at
two antithetic masks b, b̃ per step (the encoder and the gate head run once), and the loss reported is their
average: an unbiased estimate of the negative ELBO per view, as for the other guides. The logged contrastive term
and open-gate fraction are those of the guide's own draw b. Unbiased like the score-function guide ``bernoulli``,
with lower variance than its decaying-average baseline (``tests/test_disarm.py``). One process only: the DisARM
weight of a logit needs the difference of the whole batch's loss at the two masks.
"""
from __future__ import annotations

import pyro.distributions as dist

from guides.base import GUIDES, GateGuide
from pyro_ncl.disarm import DisARM_ELBO


@GUIDES.register("disarm")
class DisarmGate(GateGuide):
    reparameterized = False
    single_process_reason = ("weighs each gate logit's gradient by the difference of the whole batch's contrastive "
                             "loss at two antithetic masks, which one process's share does not give")

    @classmethod
    def closed_form_kl_with(cls, prior) -> bool:
        return prior.closed_form_kl  # the KL's gradient in a is pathwise, whatever the mask's estimator

    def posterior(self, logits):
        return dist.Bernoulli(logits=logits)

    def make_elbo(self):
        return DisARM_ELBO()
