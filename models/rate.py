"""``rate``: a penalty on each dimension's open rate across the data, not on each gate (not part of an ELBO).

The Bernoulli prior's gate term, Σ_v Σ_d KL(q(m_vd) ‖ π), decomposes (per dimension) into the mutual information
between image and gate plus KL(q̄_d ‖ π) of the aggregate open rate q̄_d = mean_v q(m_vd = 1): it charges every
image-specific choice, and is smallest when every gate is a coin flip of bias π — dropout, not selection. This
penalty keeps only the second part, estimated on the batch:

    penalty per view = β · Σ_d KL(Bern(q̄_d) ‖ Bern(π)),   q̄_d = mean over the batch's gates of σ(a_gd),

so a dimension may open for some images and not for others at no cost, as long as it opens for about a fraction π
of them (π ≈ 1/C for class-like dimensions); dimensions that open for every image are penalised. It is a penalty
named as such (``--prior rate``): the gate sites are the Bernoulli(π) ones (the KL warm-up and every hard guide
apply), but the objective is the contrastive loss plus this penalty, not an ELBO. The batch couples the gates, so
data parallelism (whose processes see only their shard) refuses it.
"""
from __future__ import annotations

import torch

from models.base import PRIORS
from models.bernoulli import BernoulliPrior

RATE_CLAMP = 1e-6


@PRIORS.register("rate")
class AggregateRatePenalty(BernoulliPrior):
    """A penalty on each dimension's open rate, not a prior: the gate sites are those of ``BernoulliPrior`` (whose
    π it keeps), the gate term is β · Σ_d KL(Bern(q̄_d) ‖ Bern(π)) of the batch's aggregate open rates q̄ (no
    ELBO). Registered among the priors because ``--prior`` is where a gate term is chosen."""

    elbo = False          # the gate term is a penalty, not the ELBO's KL
    batch_coupled = True  # the term of one gate depends on the other gates of the batch
    factorised = False    # not a product of per-gate Bernoulli terms (the structured exact_k posterior refuses it)

    def gate_kl(self, q_logits: torch.Tensor, prior_probs: torch.Tensor) -> torch.Tensor:
        """[G, K] logits of the batch's gates → [G], each entry Σ_d KL(Bern(q̄_d) ‖ Bern(π_d)) (so that their sum
        over the batch, scaled by the plate to the dataset and divided by its size, is the penalty per view); a
        single global gate [K] → [] (q̄ = q)."""
        q_bar = torch.sigmoid(q_logits).reshape(-1, q_logits.shape[-1]).mean(0)
        q_bar = q_bar.clamp(RATE_CLAMP, 1 - RATE_CLAMP)  # [K]
        pi = torch.as_tensor(prior_probs, dtype=q_bar.dtype, device=q_bar.device)
        kl = q_bar * (q_bar.log() - pi.log()) + (1 - q_bar) * ((-q_bar).log1p() - (-pi).log1p())
        return kl.sum(-1).expand(q_logits.shape[:-1])
