"""Gate distributions.

``StraightThroughBernoulli(logits, temperature)`` is *exactly* Bernoulli(σ(logits)) in law: its sample is the hard
mask 1[logits + L > 0] with L ~ Logistic(0, 1). Its ``rsample`` carries the gradient of the Concrete (relaxed
Bernoulli) sample σ((logits + L)/T) — the straight-through estimator — so the contrastive likelihood can be
differentiated through the mask. ``log_prob`` is the Bernoulli pmf at the hard value, and the KL to a Bernoulli
prior is the closed form (registered below through the Bernoulli parent class).

Contrast with ``pyro.distributions.RelaxedBernoulliStraightThrough``, whose ``log_prob`` is the Concrete *density*
at the soft value: paired with a Bernoulli prior (a pmf at the hard value) that is not a valid ELBO.
"""
from __future__ import annotations

import torch
import pyro.distributions as dist


class StraightThroughBernoulli(dist.Bernoulli):
    has_rsample = True

    def __init__(self, logits: torch.Tensor, temperature: float | torch.Tensor = 1.0, validate_args=None):
        # a number stays a number: a tensor made from it per step would be a host-to-device copy (a wait on CUDA)
        self.temperature = temperature if isinstance(temperature, torch.Tensor) else float(temperature)
        super().__init__(logits=logits, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(StraightThroughBernoulli, _instance)
        new.temperature = self.temperature
        return super().expand(batch_shape, _instance=new)

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device).clamp(1e-6, 1 - 1e-6)
        return self.from_uniforms(u)

    def from_uniforms(self, u: torch.Tensor) -> torch.Tensor:
        """The straight-through sample for given uniforms u ∈ (0, 1): hard 1[a + logit(u) > 0] forward, the
        gradient of σ((a + logit(u))/T) backward."""
        noisy = self.logits.expand(u.shape) + (u.log() - (-u).log1p())
        soft = torch.sigmoid(noisy / self.temperature)
        return (noisy > 0).to(self.logits.dtype) + (soft - soft.detach())

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self.rsample(sample_shape)


def bernoulli_kl(q_logits: torch.Tensor, prior_probs: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(σ(q_logits)) ‖ Bernoulli(prior_probs)), elementwise, numerically stable in the logits."""
    q = torch.sigmoid(q_logits)
    log_q1, log_q0 = torch.nn.functional.logsigmoid(q_logits), torch.nn.functional.logsigmoid(-q_logits)
    prior_probs = torch.as_tensor(prior_probs, dtype=q_logits.dtype, device=q_logits.device)
    return q * (log_q1 - prior_probs.log()) + (1 - q) * (log_q0 - (-prior_probs).log1p())
