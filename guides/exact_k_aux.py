"""``exact_k_aux``: the exactly-k gate (``exact_k``) with CSR's remedy for dead dimensions, an auxiliary top-k term
on the dimensions the gate has stopped opening.

The gate, its prior, its KL and its SIMPLE gradient are ``exact_k``'s. What is added: a dimension is *dead* once it
was in no view's posterior mode (the k largest θ_vd, the test-time gate) in the last ``--aux-dead-steps`` training
batches before this one (a buffer of idle steps per dimension, in the checkpoint, so a resumed run keeps it). The
mode, not the sampled mask: the sampled masks of a 512-view batch open every dimension now and then (measured: with
the samples no dimension of 128 was ever idle for 20 batches, and the run was exact_k's bit for bit), while about
half the dimensions are never in any image's mode, so never in the features. While at least two are dead, each
view also keeps its k_aux = min(2k, dead) largest dead entries of z,

    m_aux(v) = top-k_aux over the dead d of z_vd,      L_aux = NT-Xent(normalize(z ⊙ m_aux)),

and the loss grows by α · 2N · L_aux (α = ``--aux-weight``; Gao et al. weigh their aux-k term 1/32; 2N the views of
the dataset, as the contrastive factor is scaled). The term trains the encoder only (z with its gradient, the
mask m_aux chosen without one): it makes the dead dimensions carry the views' identity, so that opening them pays
off in the main term and the gate's gradient can revive them. It enters as a pathwise ``pyro.factor`` in the guide,
so the objective is the ELBO of the gated model minus α · 2N · L_aux: a penalised ELBO (the penalty belongs to the
training recipe, not to the probabilistic model; it is zero while no dimension is dead, e.g. during the budget's
anneal from K). ``active dims`` measures what it achieves.

Data parallel: each process keeps its own idle counts (from its own views), so the dead sets may differ between
processes for a step; each process's term is still that of its own views.
"""
from __future__ import annotations

import pyro
import torch

from guides.base import GUIDES
from guides.exact_k import ExactKGate
from pyro_ncl.batch import EncodedBatch
from pyro_ncl.likelihoods.nt_xent import nt_xent
from pyro_ncl.ops import safe_normalize


@GUIDES.register("exact_k_aux")
class ExactKAuxGate(ExactKGate):

    def __init__(self, backbone_dim, hidden_dim, feature_dim, prior, *, aux_weight: float = 1 / 32,
                 aux_dead_steps: int = 20, aux_temperature: float = 0.2, **kwargs):
        super().__init__(backbone_dim, hidden_dim, feature_dim, prior, **kwargs)
        self.aux_weight, self.aux_dead_steps, self.aux_temperature = aux_weight, aux_dead_steps, aux_temperature
        self.register_buffer("idle_steps", torch.zeros(feature_dim, dtype=torch.long))

    @classmethod
    def options(cls, config) -> dict:
        return {**super().options(config), "aux_weight": config.aux_weight,
                "aux_dead_steps": config.aux_dead_steps, "aux_temperature": config.temperature}

    def dead(self) -> torch.Tensor:
        """[K] bool: the dimensions in no view's posterior mode in the last ``aux_dead_steps`` training batches."""
        return self.idle_steps >= self.aux_dead_steps

    def track(self, gate: torch.Tensor) -> None:
        """gate [G, K] {0, 1} (the views' posterior modes in training) → idle counts: 0 where a view's gate holds
        the dimension, else + 1."""
        opened = (gate.detach() > 0.5).any(0)
        self.idle_steps.copy_(torch.where(opened, torch.zeros_like(self.idle_steps), self.idle_steps + 1))

    def aux_mask(self, z: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """normalised z [2B, K], dead [K] bool → [2B, K] {0, 1}: each view's k_aux = min(2k, #dead) largest dead
        entries (chosen without gradient; fixed shapes, no value read from the device)."""
        scores = z.detach().masked_fill(~dead, float("-inf"))
        top = torch.topk(scores, min(2 * self.k, z.shape[-1]), dim=1).indices
        return torch.zeros_like(z).scatter_(1, top, 1.0) * dead.to(z.dtype)

    def aux_loss(self, z: torch.Tensor) -> torch.Tensor:
        """normalised z [2B, K] (with its gradient) → [] L_aux = NT-Xent(normalize(z ⊙ m_aux)), or 0 while fewer
        than two dimensions are dead (a single kept entry is one-hot: no gradient)."""
        dead = self.dead()
        enough = (dead.sum() >= 2).to(z.dtype)
        return enough * nt_xent(z * self.aux_mask(z, dead), self.aux_temperature)

    def guide(self, batch: EncodedBatch):
        pyro.module("guide", self)
        z = safe_normalize(batch.z)
        logits = self.scope.pool(self.view_logits(batch.h, z), batch)
        self._sample_gate(batch, logits)
        train = self.training and torch.is_grad_enabled()
        if train and self.aux_weight > 0:  # the dead set of the batches before this one
            aux = self.aux_loss(z)
            pyro.factor("aux_k", self.aux_weight * batch.dataset_views * aux, has_rsample=True)
            self.last_stats["aux_k"] = aux.detach()
        if train:
            with torch.no_grad():  # the posterior's mode: ones on each view's k_t largest θ
                self.track(self.scope.to_views(self.posterior(logits).mode, batch))
        self.last_stats["dead_dims"] = self.dead().sum()
