"""The gated contrastive model.

    for each gate g of the guide's scope (by default one per view: a plate over the 2N views, subsampled to the
    batch's 2B views; or one per image, or one for the dataset — ``pyro_ncl.scopes``):
        m_g ~ prior                                   (per-dimension gate, site "gate", KL weight β)
    factor("contrastive", −2N · mean_v loss(normalize(normalize(z_v) ⊙ mask(m_{g(v)}))))

(``mask`` is the prior's: the value itself for hard gates, σ(y) for a relaxed gate whose site value is the logit y.)

The contrastive factor couples the views of a batch (every view is every other view's negative), so it sits
*outside* the plate and is scaled by hand from the batch mean to the 2N views of the dataset; inside the plate
Pyro would treat it as per-view and drop the cross-view terms of score-function gradients.

When the guide is reparameterised and the prior has a closed-form KL (the default ``exact_k`` guide with the
``bernoulli`` prior), the gate sites' log densities are masked out and the guide adds the exact KL instead (see
``guides.base``): a Rao-Blackwellised, zero-variance estimate of the gate term of the ELBO.
"""
from __future__ import annotations

import pyro
import torch.nn as nn

from pyro_ncl import distributed
from pyro_ncl.batch import EncodedBatch
from pyro_ncl.distributions import weighted
from pyro_ncl.ops import safe_normalize
from pyro_ncl.scopes import VIEW


class ContrastiveModel(nn.Module):
    def __init__(self, likelihood: nn.Module, prior: nn.Module | None = None, kl_weight: float = 1.0,
                 analytic_kl: bool = True, scope=VIEW):
        super().__init__()
        self.likelihood = likelihood
        self.prior = prior
        self.kl_weight = kl_weight
        self.analytic_kl = analytic_kl
        self.scope = scope
        self.last_stats = {}

    def model(self, batch: EncodedBatch):
        pyro.module("model", self)
        z = safe_normalize(batch.z)
        if self.prior is not None:
            z = safe_normalize(z * self.prior.mask(self._gate(batch)))
        loss = self._contrastive(z, batch)
        self.last_stats = {"contrastive": loss.detach()}
        pyro.factor("contrastive", -batch.dataset_views * loss)

    def _contrastive(self, z, batch: EncodedBatch):
        """The batch-mean loss; over G processes (``pyro_ncl.distributed``) the mean over this process's 2b
        anchor views of the per-view loss against the gathered global batch of 2B views (with gradient): G ×
        this process's share of the global mean, matching the views plate's scale 2N/(2b) = G · 2N/(2B)."""
        if not distributed.is_distributed():
            return self.likelihood(z, batch.labels)
        rows = distributed.local_view_rows(z.shape[0] // 2, z.device)
        return self.likelihood.per_view(distributed.gather_views(z), rows=rows).mean()

    def _gate(self, batch: EncodedBatch):
        """The gate site in the scope's plate → one mask row per view [2B, K]."""
        device, num_dims = batch.z.device, batch.z.shape[-1]
        with weighted(self.kl_weight):  # β = 0: masked, the gate still sampled
            context = self.prior.sample_globals(device)
            prior = self.prior.gate_dist(context, num_dims, device).to_event(1).mask(not self.analytic_kl)
            with self.scope.plate(batch):
                gate = pyro.sample("gate", prior)
        return self.scope.to_views(gate, batch)
