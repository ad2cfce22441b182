"""Amortized gate guides: q(m_v | h_v) = Π_d Bernoulli(σ(a_vd)) with logits a = gate_head(h) from an MLP shaped
like the projector on the backbone features h (detached by default, as the authors do).

Estimator of the gate term (the default pair: Bernoulli prior, straight-through guide). The training mask is the
hard sample m = 1[a + L > 0], L ~ Logistic, i.e. *exactly* a Bernoulli(σ(a)) draw at any gate temperature T; its
gradient is the Concrete relaxation's σ((a + L)/T) (straight-through). Because q is a product of Bernoullis and the
prior is too, the ELBO's gate term E_q[log p(m) − log q(m)] = −Σ_d KL(Bern(σ(a_d)) ‖ Bern(π)) is added in closed
form (a ``pyro.factor`` in the guide, the Monte-Carlo gate sites masked): its value and its gradient in a are exact.
Pushing the ST gradient through a Monte-Carlo log p − log q instead biases the KL gradient by the factor
E[∂σ((a+L)/T)/∂a] / σ'(a) (cosine with the true gradient ≈ 0.95 at T = 1), and pairing a Bernoulli prior with
Pyro's RelaxedBernoulliStraightThrough (a Concrete density at the soft value) is not an ELBO at all.

A guide is an ``nn.Module`` with ``guide(batch)``, ``probs(h)`` (posterior open probabilities, [N, K]) and
``mode(h)`` (the test-time hard gate, [N, K]); ``reparameterized`` says whether its gate sample is differentiable.
A new guide is one class and one ``GUIDES.register`` line; its factory takes ``(encoder, prior, config)``.
"""
from __future__ import annotations

import pyro
import pyro.poutine as poutine
import torch
import torch.nn as nn

from pyro_ncl.batch import EncodedBatch, views_plate
from pyro_ncl.distributions import StraightThroughBernoulli, bernoulli_kl
from pyro_ncl.encoders import mlp
from pyro_ncl.registry import Registry

GUIDES: Registry = Registry("guide")


class AmortizedGate(nn.Module):
    """Relaxed straight-through guide (default): hard Bernoulli mask forward, Concrete gradient backward."""

    reparameterized = True
    per_view_gate = True

    def __init__(self, backbone_dim: int, hidden_dim: int, feature_dim: int, prior: nn.Module,
                 temperature: float = 1.0, kl_weight: float = 1.0, analytic_kl: bool = True,
                 detach_features: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"--gate-temperature must be > 0, got {temperature}")
        self.head = mlp(backbone_dim, hidden_dim, feature_dim)
        self.prior = prior
        self.temperature = temperature
        self.kl_weight = kl_weight
        self.analytic_kl = analytic_kl
        self.detach_features = detach_features

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h [N, F] → gate logits a [N, K] (fp32, also under autocast)."""
        h = h.detach() if self.detach_features else h
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.head(h.float())

    def probs(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(h))

    def mode(self, h: torch.Tensor) -> torch.Tensor:
        return (self.logits(h) > 0).to(h.dtype)

    def posterior(self, logits: torch.Tensor):
        return StraightThroughBernoulli(logits, self.temperature)

    def guide(self, batch: EncodedBatch):
        pyro.module("guide", self)
        device = batch.z.device
        logits = self.logits(batch.h)
        q = self.posterior(logits)
        with poutine.scale(scale=self.kl_weight):
            context = self.prior.guide_globals(device)
            with views_plate(batch):
                gate = pyro.sample("gate", q.to_event(1).mask(not self.analytic_kl))
                kl = bernoulli_kl(logits, self.prior.gate_dist(context, logits.shape[-1], device).probs).sum(-1)
                if self.analytic_kl:
                    pyro.factor("gate_kl", kl, has_rsample=True)
        self.last_stats = {"gate_kl": kl.detach().mean(), "open_gates": gate.detach().mean()}


@GUIDES.register("relaxed_st")
def _relaxed_st(encoder, prior, config) -> AmortizedGate:
    return AmortizedGate(encoder.backbone_dim, config.hidden_dim, encoder.feature_dim, prior,
                         temperature=config.gate_temperature, kl_weight=config.kl_weight,
                         analytic_kl=prior.closed_form_kl, detach_features=not config.gate_grad_to_backbone)


class NoGate(nn.Module):
    """The guide of the ungated methods (CL, NCL): the model has no latent variable."""

    reparameterized = True
    per_view_gate = True

    def guide(self, batch: EncodedBatch):
        pyro.module("guide", self)


@GUIDES.register("none")
def _none(encoder, prior, config) -> NoGate:
    return NoGate()
