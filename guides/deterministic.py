"""``deterministic``: the authors' gate, a point estimate that reproduces their loss.

mask = 1[σ(a/T) > 0.5] with the straight-through gradient of σ(a/T) (no sampling), and the Bernoulli KL used as
a penalty with q = σ(a/T) and π clamped to [0.01, 0.99]. The gate site is a (masked) Delta at the mask; the
penalty enters as the guide's ``gate_kl`` factor, so the objective per view is the authors'
NT-Xent(normalize(normalize(z) ⊙ mask)) + λ · mean_views Σ_d KL(q_d ‖ π). Not a posterior: an ablation.
"""
from __future__ import annotations

import pyro.distributions as dist
import torch

from guides.base import GUIDES, GateGuide
from pyro_ncl.distributions import bernoulli_kl

CLAMP = (0.01, 0.99)


@GUIDES.register("deterministic")
class ThresholdGate(GateGuide):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.analytic_kl = True  # the penalty is always the closed form

    def posterior(self, logits):
        soft = torch.sigmoid(logits / self.temperature)
        hard = (soft > 0.5).to(soft.dtype)
        return dist.Delta(hard + (soft - soft.detach()))

    def closed_form_kl(self, logits, prior_probs):
        q = torch.sigmoid(logits / self.temperature).clamp(*CLAMP)
        return bernoulli_kl(torch.logit(q), prior_probs.clamp(*CLAMP)).sum(-1)
