"""The exactly-k conditional Bernoulli distribution: the k-subset law of SIMPLE (Ahmed et al., ICLR 2023).

    q(m | θ) = Π_d σ(θ_d)^{m_d} (1 − σ(θ_d))^{1 − m_d} · 1[Σ_d m_d = k] / P(Σ_d m_d = k)
             = exp(θ·m) / e_k(exp θ)                   on masks m ∈ {0,1}^K with exactly k ones,

e_k the k-th elementary symmetric polynomial. Everything follows from the table of log e_j over prefixes of the
dimensions, F[i, j] = log e_j(exp θ_1, …, exp θ_i) (j = 0 … k), filled by the recursion
F[i, j] = logaddexp(F[i − 1, j], θ_i + F[i − 1, j − 1]) in log space, O(K·k):
    log Z = F[K, k];
    marginals μ_d = q(m_d = 1) = ∂ log Z / ∂θ_d = exp(θ_d + log Σ_j e_j(prefix < d) e_{k−1−j}(suffix > d) − log Z),
        from the prefix table and the same table over the reversed dimensions (Σ_d μ_d = k);
    exact sampling, last dimension first: q(m_i = 1 | r ones left among dimensions 1 … i) =
        exp(θ_i + F[i − 1, r − 1] − F[i, r]);
    entropy H = log Z − θ·μ;  log q(m) = θ·m − log Z;
    mode: the k largest θ_d (the most probable mask);
    KL to a factorised Bernoulli(ρ) prior: every mask of the support has k ones, so
        KL(q ‖ p) = −H − Σ_d [μ_d log ρ_d + (1 − μ_d) log(1 − ρ_d)], for one ρ = π: −H − k log π − (K − k) log(1 − π).
Adding a constant to every θ_d changes nothing: the tables are computed on θ − c with c the midpoint of each row's
k-th and (k + 1)-th largest logits (log Z = log Z(θ − c) + k·c), which keeps the float32 tables accurate for the
logits of a run (|θ| up to a few tens). For k > K/2 the tables are those of the complement (the K − k closed gates,
logits −θ), so a table is never wider than min(k, K − k) + 1.

``rsample`` is SIMPLE's estimator: the exact discrete sample forward, the gradient of the marginals backward
(m + μ − stop_gradient(μ)). It is biased (``tests/test_conditional_bernoulli.py`` measures the bias on a problem
small enough to enumerate); the objective it is used with is an ELBO all the same.

Shapes: logits [..., K] (batch shape [...], event shape [K]); samples [S, ..., K].
"""
from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions import constraints
from torch.distributions.utils import lazy_property

NEG = -1e30  # log 0 that keeps logaddexp and its gradient finite (exp(NEG − x) underflows to exactly 0)


def log_esp_table(logits: torch.Tensor, k: int) -> torch.Tensor:
    """logits [..., K] → [K + 1, ..., k + 1] with entry [i, ..., j] = log e_j(exp θ_1, …, exp θ_i)."""
    row = logits.new_full(logits.shape[:-1] + (k + 1,), NEG)
    row[..., 0] = 0.0
    rows = [row]
    pad = logits.new_full(logits.shape[:-1] + (1,), NEG)
    for i in range(logits.shape[-1]):
        row = torch.logaddexp(row, torch.cat([pad, row[..., :-1]], -1) + logits[..., i:i + 1])
        rows.append(row)
    return torch.stack(rows)


def _marginals(logits: torch.Tensor, prefix: torch.Tensor, k: int) -> torch.Tensor:
    """μ [..., K] from the prefix table of ``logits`` and the table of the reversed logits."""
    K = logits.shape[-1]
    suffix = log_esp_table(logits.flip(-1), k)[:K].flip(0)  # [i] = log e_j of the dimensions after i
    pairs = prefix[:K, ..., :k] + suffix[..., :k].flip(-1)  # [i, ..., j]: e_j(before i) · e_{k−1−j}(after i)
    log_mu = torch.logsumexp(pairs, -1) + logits.movedim(-1, 0) - prefix[K, ..., k]
    return log_mu.exp().movedim(0, -1)


class ConditionalBernoulli(dist.TorchDistribution):
    """Masks m ∈ {0,1}^K with exactly ``k`` ones, q(m) ∝ exp(logits · m) (see the module docstring)."""

    arg_constraints = {"logits": constraints.real_vector}
    support = constraints.independent(constraints.boolean, 1)
    has_rsample = True

    def __init__(self, logits: torch.Tensor, k: int, validate_args=None):
        K = logits.shape[-1]
        if not 0 <= k <= K:
            raise ValueError(f"k must lie in [0, {K}] (the number of dimensions), got {k}")
        self.logits, self.k = logits, int(k)
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ConditionalBernoulli, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits, new.k = self.logits.expand(batch_shape + self.event_shape), self.k
        super(ConditionalBernoulli, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    # ---- tables (of the complement when k > K/2: k' = K − k closed gates with logits −θ), on centred logits
    @property
    def _complement(self) -> bool:
        return 2 * self.k > self.logits.shape[-1]

    @lazy_property
    def _shift(self) -> torch.Tensor:
        """[..., 1] c: the midpoint of each row's k-th and (k + 1)-th largest logits (no gradient: q ignores it)."""
        K = self.logits.shape[-1]
        with torch.no_grad():
            if self.k in (0, K):
                return self.logits.mean(-1, keepdim=True)
            top = torch.topk(self.logits, self.k + 1, dim=-1).values
            return 0.5 * (top[..., self.k - 1:self.k] + top[..., self.k:])

    @lazy_property
    def _centred(self) -> torch.Tensor:
        return self.logits - self._shift

    @lazy_property
    def _table(self) -> torch.Tensor:
        if self._complement:
            return log_esp_table(-self._centred, self.logits.shape[-1] - self.k)
        return log_esp_table(self._centred, self.k)

    @lazy_property
    def log_normalizer(self) -> torch.Tensor:
        """[...] log Z = log e_k(exp θ)."""
        K = self.logits.shape[-1]
        if self._complement:  # e_k(x) = Π x · e_{K−k}(1/x)
            centred = self._centred.sum(-1) + self._table[K, ..., K - self.k]
        else:
            centred = self._table[K, ..., self.k]
        return centred + self.k * self._shift[..., 0]

    @lazy_property
    def marginals(self) -> torch.Tensor:
        """[..., K] μ_d = q(m_d = 1), differentiable in the logits; Σ_d μ_d = k."""
        K = self.logits.shape[-1]
        if self._complement:
            return 1 - _marginals(-self._centred, self._table, K - self.k)
        return _marginals(self._centred, self._table, self.k)

    @property
    def mean(self) -> torch.Tensor:
        return self.marginals

    @property
    def mode(self) -> torch.Tensor:
        """[..., K] the most probable mask: ones on the k largest logits (ties by position)."""
        keep = torch.topk(self.logits, self.k, dim=-1).indices
        return torch.zeros_like(self.logits).scatter_(-1, keep, 1.0)

    def entropy(self) -> torch.Tensor:
        """[...] H = log Z − θ·μ (nats), on the centred logits (the same value, less rounding)."""
        return self.log_normalizer - self.k * self._shift[..., 0] - (self._centred * self.marginals).sum(-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """θ·m − log Z for masks with k ones, −inf otherwise."""
        if self._validate_args:
            self._validate_sample(value)
        value = value.to(self.logits.dtype)
        inside = (value.sum(-1) - self.k).abs() < 0.5
        lp = (self.logits * value).sum(-1) - self.log_normalizer
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def kl_to_bernoulli(self, probs: torch.Tensor) -> torch.Tensor:
        """[...] KL(q ‖ Π_d Bernoulli(ρ_d)) = −H − Σ_d [μ_d log ρ_d + (1 − μ_d) log(1 − ρ_d)], ρ ``probs`` [K] or
        [..., K] in (0, 1)."""
        probs = torch.as_tensor(probs, dtype=self.logits.dtype, device=self.logits.device)
        mu = self.marginals
        return -self.entropy() - (mu * probs.log() + (1 - mu) * (-probs).log1p()).sum(-1)

    # ---- sampling
    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            u = torch.rand(self._extended_shape(sample_shape), dtype=self.logits.dtype, device=self.logits.device)
            return self.from_uniforms(u)

    def from_uniforms(self, u: torch.Tensor) -> torch.Tensor:
        """The exact draw for uniforms u [S, ..., K] in [0, 1) (one per dimension), last dimension first."""
        with torch.no_grad():
            if self._complement:
                closed = self._draw(-self._centred, self._table, self.logits.shape[-1] - self.k, u)
                return 1 - closed
            return self._draw(self._centred, self._table, self.k, u)

    @staticmethod
    def _draw(logits, table, k, u):
        K = logits.shape[-1]
        shape = u.shape[:-1]
        left = torch.full(shape, k, dtype=torch.long, device=logits.device)
        out = torch.zeros(u.shape, dtype=logits.dtype, device=logits.device)
        for i in reversed(range(K)):  # dimension i (0-based) with `left` ones still to place among 0 … i
            before = table[i].expand(shape + (k + 1,))
            here = table[i + 1].expand(shape + (k + 1,))
            log_p = (logits[..., i].expand(shape) + before.gather(-1, (left - 1).clamp(min=0)[..., None])[..., 0]
                     - here.gather(-1, left[..., None])[..., 0])
            take = ((u[..., i] < log_p.exp()) & (left > 0)) | (left > i)  # left = i + 1: every remaining one
            out[..., i] = take.to(out.dtype)
            left = left - take.long()
        return out

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """SIMPLE: the exact sample forward, the marginals' gradient backward (m + μ − sg(μ))."""
        m = self.sample(sample_shape)
        mu = self.marginals
        return m + (mu - mu.detach())
