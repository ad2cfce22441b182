"""Gate distributions.

``StraightThroughBernoulli(logits, temperature)`` is *exactly* Bernoulli(σ(logits)) in law: its sample is the hard
mask 1[logits + L > 0] with L ~ Logistic(0, 1). Its ``rsample`` carries the gradient of the Concrete (relaxed
Bernoulli) sample σ((logits + L)/T) — the straight-through estimator — so the contrastive likelihood can be
differentiated through the mask. ``log_prob`` is the Bernoulli pmf at the hard value, and the KL to a Bernoulli
prior is the closed form (registered below through the Bernoulli parent class).

Contrast with ``pyro.distributions.RelaxedBernoulliStraightThrough``, whose ``log_prob`` is the Concrete *density*
at the soft value: paired with a Bernoulli prior (a pmf at the hard value) that is not a valid ELBO.

``LogitConcrete(temperature, logits)`` is the relaxed gate of ``relaxed_soft`` and the ``concrete`` prior, scored in
logit space (its sample is the logit y of the relaxed mask σ(y)). ``weighted(β)`` scales the gate term by the KL
weight, and masks it at β = 0.
"""
from __future__ import annotations

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from torch.distributions import constraints
from torch.distributions.utils import clamp_probs


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
    log_q1, log_q0 = F.logsigmoid(q_logits), F.logsigmoid(-q_logits)
    prior_probs = torch.as_tensor(prior_probs, dtype=q_logits.dtype, device=q_logits.device)
    return q * (log_q1 - prior_probs.log()) + (1 - q) * (log_q0 - (-prior_probs).log1p())


class LogitConcrete(dist.TorchDistribution):
    """The Concrete (relaxed Bernoulli) variable in logit space: y = (logits + L)/T with L ~ Logistic(0, 1), i.e.
    Logistic(logits/T, 1/T); the relaxed mask is σ(y) ∈ (0, 1). Batch shape: that of ``logits``.

    Scoring the relaxed gate here rather than at σ(y) changes no KL (σ is monotone) but keeps float32 exact: σ(y)
    rounds to 1 for y ≳ 16, where a density in (0, 1) space is taken at a clamped value with zero pathwise
    gradient. ``rsample`` draws from the logits directly (torch's ``LogitRelaxedBernoulli`` goes through the
    probabilities, which saturate), and ``log_prob`` is log T + x − 2 softplus(x) with x = logits − T·y.
    """

    arg_constraints = {"logits": constraints.real, "temperature": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, temperature, logits: torch.Tensor, validate_args=None):
        self.logits = logits
        self.temperature = (temperature.to(logits) if torch.is_tensor(temperature)  # a fill, not a host copy:
                            else torch.full((), float(temperature), dtype=logits.dtype, device=logits.device))
        super().__init__(logits.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(LogitConcrete, _instance)
        new.logits, new.temperature = self.logits.expand(batch_shape), self.temperature
        super(LogitConcrete, new).__init__(torch.Size(batch_shape), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        u = clamp_probs(torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device))
        return (self.logits.expand(shape) + (u.log() - (-u).log1p())) / self.temperature

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        x = self.logits - self.temperature * value
        return self.temperature.log() + x - 2 * F.softplus(x)

    @staticmethod
    def mask(value: torch.Tensor) -> torch.Tensor:
        """The relaxed mask σ(y) ∈ (0, 1) of a sample y."""
        return torch.sigmoid(value)


def weighted(weight: float):
    """``poutine.scale(weight)`` for the gate term, or ``poutine.mask(False)`` at weight 0 (which Pyro's scale
    refuses): the gate is still sampled, but contributes nothing to the objective. A masked site keeps its score
    function, so score-function gradients of the contrastive term are unaffected."""
    return poutine.scale(scale=weight) if weight > 0 else poutine.mask(mask=False)
