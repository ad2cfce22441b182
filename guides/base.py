"""The shared shape of a gate guide, and the guide registry.

A guide is a ``GateGuide`` subclass registered by name, with class attributes
    ``value_kind``       "hard" ({0,1} masks) or "soft" (relaxed masks); must match the prior's;
    ``reparameterized``  whether the gate sample is differentiable (else the ELBO's estimator for discrete
                         sites: score function, or DisARM);
    ``scope``            what one gate covers (``pyro_ncl.scopes``): a view (default), an image (both views share
                         it) or the dataset (one global gate, then no head);
    ``always_closed_form_kl``  the gate term is the closed-form KL whatever the prior (a penalty);
    ``single_process_reason``  None, or why data parallelism cannot run this guide (a one-line refusal);
and ``build(encoder, prior, config)`` (a guide's own ``__init__`` keywords come from ``options(config)``),
``posterior(logits)`` (the gate distribution, batch shape [..., K]), ``mask(value)`` (the mask a gate value applies
to z), ``logits(h)`` ([N, F] → [N, K] head logits a), ``view_logits(h, z)`` (the posterior's logits of each view's
gate given the backbone features h [N, F] and the normalised projector output z [N, K]: the head's alone unless the
guide also reads z), and the guide's own answers about its posterior, which inspection and evaluation use:
``open_logits(h, z)`` (the logit of its open probability; the view logits unless the guide says otherwise),
``probs(h, z)`` (σ of it: the test-time gate ``--test-gate mean``), ``mode(h, z)`` (the hard gate
1[open_logits > 0]: ``--test-gate mode``), ``entropy(h, z)`` (the posterior's entropy per view in nats: the sum of
the per-gate Bernoulli entropies for a factorised posterior, the exact one for a structured posterior) and
``sample_masks(h, S, z)`` (S draws of the mask), and ``answers(h, z)`` (mode, probs and entropy at once).
``posterior(logits)`` is the per-gate family (batch shape [..., K])
of factorised guides, which ``gate_distribution`` makes one event of K gates; a structured posterior (event shape
[K], e.g. ``exact_k``) overrides ``gate_distribution``. ``make_elbo()`` names the ELBO that trains it
(``TraceGraph_ELBO`` unless the guide needs its own estimator).

The gate term of the ELBO: when the guide is reparameterised and the prior has a closed-form KL, the Monte-Carlo
gate sites are masked and the exact KL enters as a ``pyro.factor`` in the guide (Rao-Blackwellised: exact value
and gradient); otherwise Pyro scores the sampled gate under both (log p − log q), which is valid when both score
the same kind of value (see ``value_kind``).
"""
from __future__ import annotations

from typing import Optional

import pyro
import torch
import torch.nn as nn
from pyro.infer import TraceGraph_ELBO

from pyro_ncl.batch import EncodedBatch
from pyro_ncl.distributions import weighted
from pyro_ncl.encoders import mlp
from pyro_ncl.metrics import EPS as ACTIVE_EPS
from pyro_ncl.ops import safe_normalize
from pyro_ncl.registry import Registry
from pyro_ncl.scopes import GLOBAL, VIEW

GUIDES: Registry = Registry("guide")


class GateGuide(nn.Module):
    value_kind = "hard"
    reparameterized = True
    scope = VIEW
    always_closed_form_kl = False
    single_process_reason: Optional[str] = None

    def __init__(self, backbone_dim: int, hidden_dim: int, feature_dim: int, prior: nn.Module,
                 temperature: float = 1.0, kl_weight: float = 1.0, detach_features: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"--gate-temperature must be > 0, got {temperature}")
        self.head = mlp(backbone_dim, hidden_dim, feature_dim) if self.scope is not GLOBAL else None
        self.prior = prior
        self.temperature = temperature
        self.kl_weight = kl_weight
        self.detach_features = detach_features
        self.analytic_kl = self.closed_form_kl_with(prior)
        self.last_stats = {}

    @classmethod
    def closed_form_kl_with(cls, prior) -> bool:
        """Whether the gate term is the closed-form KL with this prior (else Pyro scores the sampled gate)."""
        return cls.always_closed_form_kl or (cls.reparameterized and prior.closed_form_kl)

    @classmethod
    def options(cls, config) -> dict:
        """This guide's own ``__init__`` keywords, read from the config (none by default)."""
        return {}

    @classmethod
    def build(cls, encoder, prior, config) -> "GateGuide":
        return cls(encoder.backbone_dim, config.hidden_dim, encoder.feature_dim, prior,
                   temperature=config.gate_temperature, kl_weight=config.kl_weight,
                   detach_features=not config.gate_grad_to_backbone, **cls.options(config))

    # ---- amortization
    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h [N, F] → gate logits a [N, K], in the head's precision (fp32) also under autocast."""
        h = h.detach() if self.detach_features else h
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.head(h.to(self.head[0].weight.dtype))

    def view_logits(self, h: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """h [N, F], normalised z [N, K] → the posterior's logits of each view's gate [N, K] (here the head's;
        value-aware guides read z too)."""
        return self.logits(h)

    def open_logits(self, h: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """h [N, F], z [N, K] → [N, K] logit of this guide's open probability q(m_d = 1 | x) (the view logits by
        default)."""
        return self.view_logits(h, z)

    def probs(self, h: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """h [N, F], z [N, K] → [N, K] this guide's open probability q(m_d = 1 | x)."""
        return torch.sigmoid(self.open_logits(h, z))

    def mode(self, h: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """h [N, F], z [N, K] → [N, K] the test-time hard gate 1[q(m_d = 1 | x) > ½]."""
        return (self.open_logits(h, z) > 0).to(h.dtype)

    def entropy(self, h: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """h [N, F], z [N, K] → [N] the posterior's entropy (nats) of each view's gates: Σ_d H(q(m_d | x)) for a
        factorised posterior (its open probabilities ``probs``)."""
        p = self.probs(h, z).double()
        return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p)).sum(-1).to(h.dtype)

    def answers(self, h: torch.Tensor, z: Optional[torch.Tensor] = None) -> dict:
        """h [N, F], z [N, K] → {"mode": [N, K], "probs": [N, K], "entropy": [N], "doubt_entropy": [N]}: what
        evaluation reads of the posterior of each view; ``doubt_entropy`` is the entropy of the gates on z's
        non-zero entries alone (for a factorised posterior, the sum of their per-gate entropies), the part of the
        posterior's uncertainty that can change a feature. A guide whose posterior is costly to build overrides it
        to build it once."""
        probs = self.probs(h, z)
        out = {"mode": self.mode(h, z), "probs": probs, "entropy": self.entropy(h, z)}
        if z is not None:
            p = probs.double()
            per_gate = -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))
            out["doubt_entropy"] = (per_gate * (z.abs() > ACTIVE_EPS)).sum(-1).to(h.dtype)
        return out

    def sample_masks(self, h: torch.Tensor, num_samples: int, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """h [N, F], z [N, K] → [S, N, K] masks drawn from the guide, as they gate z in training (no gradient)."""
        with torch.no_grad():
            return self.mask(self.posterior(self.view_logits(h, z)).sample((num_samples,)))

    # ---- the variational family and its KL
    def posterior(self, logits: torch.Tensor):
        raise NotImplementedError

    def gate_distribution(self, logits: torch.Tensor):
        """[G, K] logits → the gate site's distribution, batch shape [G], event shape [K]."""
        return self.posterior(logits).to_event(1)

    def mask(self, value: torch.Tensor) -> torch.Tensor:
        """[..., K] value of the gate site → the mask it applies to z (the value itself for hard gates)."""
        return value

    def make_elbo(self):
        """The ELBO whose ``loss_and_grads(model, guide, *args)`` trains this guide."""
        return TraceGraph_ELBO()

    def closed_form_kl(self, logits: torch.Tensor, prior_probs: torch.Tensor, posterior=None) -> torch.Tensor:
        """[G, K] logits of the batch's gates → [G] gate terms: Σ_d KL(q ‖ p), or the prior's own term.
        ``posterior``: the gate site's distribution on these logits, when the guide can reuse it."""
        return self.prior.gate_kl(logits, prior_probs)

    def gate_stats(self, posterior) -> dict:
        """Statistics of the batch's posterior worth logging beside the gate KL (none by default)."""
        return {}

    def site_infer(self, batch: EncodedBatch) -> Optional[dict]:
        """Extra ``infer`` options of the gate site (score-function baselines)."""
        return None

    def guide(self, batch: EncodedBatch):
        pyro.module("guide", self)
        logits = self.view_logits(batch.h, safe_normalize(batch.z))  # [2B, K]
        self._sample_gate(batch, self.scope.pool(logits, batch))

    def _sample_gate(self, batch: EncodedBatch, logits: torch.Tensor):
        """Site "gate" from the logits of the scope's gates ([2B, K] per view, [B, K] per image, [K] global) in
        the scope's plate, and its KL."""
        device, num_dims = batch.z.device, logits.shape[-1]
        q = self.gate_distribution(logits)
        with weighted(self.kl_weight):
            context = self.prior.guide_globals(device)
            prior = self.prior.gate_dist(context, num_dims, device)
            with self.scope.plate(batch):
                gate = pyro.sample("gate", q.mask(not self.analytic_kl), infer=self.site_infer(batch))
                if self.analytic_kl:
                    kl = self.closed_form_kl(logits, prior.probs, q)
                    pyro.factor("gate_kl", kl, has_rsample=True)
                else:
                    with torch.no_grad():  # only logged: Pyro scores the site itself
                        kl = q.log_prob(gate) - prior.log_prob(gate).sum(-1)  # the Monte-Carlo estimate
        open_gates = (self.mask(gate.detach()) > 0.5).float().mean()
        self.last_stats = {"gate_kl": kl.detach().mean(), "open_gates": open_gates, **self.gate_stats(q)}
        return gate

