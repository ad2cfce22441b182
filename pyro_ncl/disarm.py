"""DisARM (Dong, Mnih & Tucker 2020): an unbiased gradient for Bernoulli latents from two antithetic masks, as a
Pyro ELBO (Pyro has none).

For m ~ Π_i Bernoulli(σ(a_i)) and a cost f(m): with u ~ U(0, 1), b = 1[u < σ(a)] and b̃ = 1[1 − u < σ(a)] (each
exactly Bernoulli(σ(a)), antithetic),

    ∂/∂a_i E_q f(m)  ≈  ½ (f(b) − f(b̃)) · (−1)^{b̃_i} · 1[b_i ≠ b̃_i] · σ(|a_i|)                (``disarm_weights``)

unbiased, no relaxation, and lower variance than the score function with a baseline (``tests/test_disarm.py``
checks both). f may couple every Bernoulli of the batch (the contrastive factor does): the weight of a_i uses the
whole f, not a per-view cost.

``DisARM_ELBO.loss_and_grads(model, guide, *args)`` runs the guide once (its draw is b; the uniforms are drawn
given b, so b̃ is its antithetic partner), the model twice (at b̃, then at b, so the model's last run is at the
guide's own draw), and returns the antithetic average ½(f(b) + f(b̃)) of the loss f = log q − log p: an unbiased
estimate of the negative ELBO. Every non-reparameterised guide site must be a Bernoulli and gets the DisARM
gradient (f: the whole loss); everything else gets the pathwise gradient of ½(f(b) + f(b̃)). Whatever the guide
computes before sampling (the encoder, the gate head) runs once.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.distributions as tdist
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from pyro.util import check_model_guide_match


def antithetic_partner(logits: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The partner b̃ = 1[1 − u < σ(a)] of a draw b = 1[u < σ(a)], with u drawn given b (u | b = 1 ~ U(0, σ(a)),
    u | b = 0 ~ U(σ(a), 1)): (b, b̃) has the law of the DisARM pair. logits a, b: [..., K] → b̃ [..., K]."""
    p = torch.sigmoid(logits.detach())
    v = torch.rand_like(p)
    u = torch.where(b > 0.5, p * v, p + (1 - p) * v)
    return (1 - u < p).to(b.dtype)


def disarm_weights(logits: torch.Tensor, b: torch.Tensor, b_tilde: torch.Tensor, f_b: torch.Tensor,
                   f_b_tilde: torch.Tensor) -> torch.Tensor:
    """The DisARM estimate of ∂ E f / ∂a: ½ (f(b) − f(b̃)) (−1)^{b̃} 1[b ≠ b̃] σ(|a|), elementwise.
    logits, b, b_tilde: [..., K]; f_b, f_b_tilde: the costs, broadcastable against them (scalars, or [..., 1, 1]
    for batches of pairs)."""
    sign = 1 - 2 * b_tilde
    return 0.5 * (f_b - f_b_tilde) * sign * (b != b_tilde).to(logits.dtype) * torch.sigmoid(logits.abs())


def _float(x) -> float:
    return float(x.detach()) if torch.is_tensor(x) else float(x)


def _bernoulli(site) -> tdist.Bernoulli:
    fn = site["fn"]
    while not isinstance(fn, tdist.Bernoulli) and hasattr(fn, "base_dist"):  # Independent, Masked, Expanded
        fn = fn.base_dist
    if not isinstance(fn, tdist.Bernoulli):
        raise NotImplementedError(f"DisARM_ELBO: the non-reparameterised guide site {site['name']!r} is a "
                                  f"{type(site['fn']).__name__}; DisARM needs a Bernoulli")
    return fn


class DisARM_ELBO(ELBO):
    """The ELBO with DisARM gradients for the guide's Bernoulli sites (one antithetic pair per step) and pathwise
    gradients elsewhere. ``loss`` and ``loss_and_grads`` return the antithetic average of −ELBO; after a call,
    ``last_pair`` holds {site: (b, b̃)} and ``last_losses`` (f(b), f(b̃)) as floats."""

    def __init__(self, max_plate_nesting: float = float("inf")):
        super().__init__(num_particles=1, max_plate_nesting=max_plate_nesting)
        self.last_pair: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.last_losses: Tuple[float, float] = (float("nan"), float("nan"))

    def _get_trace(self, model, guide, args, kwargs):
        """One model/guide trace pair at the guide's draw (``ELBO``'s interface; the estimator uses two)."""
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def _pair_losses(self, model, guide, args, kwargs):
        """(f(b), f(b̃)) with their pathwise graphs, and {site: (logits, b, b̃)}."""
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        pairs = {}
        for name, site in guide_trace.nodes.items():
            if (site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
                    and not site["fn"].has_rsample):
                logits = _bernoulli(site).logits
                pairs[name] = (logits, site["value"], antithetic_partner(logits, site["value"]))
        partner = guide_trace.copy()
        for name, (_, _, b_tilde) in pairs.items():
            partner.nodes[name] = {**guide_trace.nodes[name], "value": b_tilde}
        model_log_p = []
        for replayed in (partner, guide_trace):  # b̃ first: the model's last run is at the guide's own draw
            model_trace = poutine.trace(poutine.replay(model, trace=replayed)).get_trace(*args, **kwargs)
            if is_validation_enabled():
                check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
            model_trace = prune_subsample_sites(model_trace)
            model_trace.compute_log_prob()
            model_log_p.append(sum(s["log_prob_sum"] for s in model_trace.nodes.values() if s["type"] == "sample"))
        guide_trace = prune_subsample_sites(guide_trace)
        guide_trace.compute_log_prob()
        log_q = sum(s["log_prob_sum"] for s in guide_trace.nodes.values() if s["type"] == "sample")
        log_q_tilde = log_q
        for name, (_, b, b_tilde) in pairs.items():  # log q at b̃ differs only at the Bernoulli sites
            site = guide_trace.nodes[name]
            log_q_tilde = log_q_tilde - site["log_prob_sum"] + scale_and_mask(
                site["fn"].log_prob(b_tilde), site["scale"], site["mask"]).sum()
        f_b, f_b_tilde = log_q - model_log_p[1], log_q_tilde - model_log_p[0]
        self.last_pair = {name: (b.detach(), b_tilde) for name, (_, b, b_tilde) in pairs.items()}
        self.last_losses = (_float(f_b), _float(f_b_tilde))
        return f_b, f_b_tilde, pairs

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            f_b, f_b_tilde, _ = self._pair_losses(model, guide, args, kwargs)
        return _float(0.5 * (f_b + f_b_tilde))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        f_b, f_b_tilde, pairs = self._pair_losses(model, guide, args, kwargs)
        loss = 0.5 * (f_b + f_b_tilde)
        surrogate = loss
        for logits, b, b_tilde in pairs.values():
            weights = disarm_weights(logits.detach(), b, b_tilde, f_b.detach(), f_b_tilde.detach())
            surrogate = surrogate + (weights * logits).sum()
        if torch.is_tensor(surrogate) and surrogate.requires_grad:
            surrogate.backward()
        return _float(loss)
