"""``atmost_k``: the exactly-k gate's family relaxed to *at most* k open gates per view — the posterior keeps as
few gates as it finds worth opening, up to the budget.

    q(m_v | x_v) ∝ Π_d σ(θ_vd)^{m_vd} (1 − σ(θ_vd))^{1 − m_vd} · 1[Σ_d m_vd ≤ k],   θ_v = z_v / s + head(h_v)

(``ConditionalBernoulli(…, at_most=True)``: Z = Σ_{c ≤ k} e_c, the same tables; the count c of open gates is drawn
from P(c) ∝ e_c, then the gates given c as exactly-c). Why: under the exactly-k posterior a view whose z has fewer
than k non-zero entries must open gates on zeros — they change no feature but spread uniformly-ish over the
zeros and add up to log C(K − nnz, k − nnz) nats of entropy, which at 5 epochs on Fashion-MNIST is most of the
posterior's entropy. Here such gates may stay closed: a zero's logit θ_d = head(h)_d decides.

Everything else is ``exact_k``'s: θ, the budget k = max(2, round(π·K)) and its anneal, the factorised Bernoulli
prior, the gate term KL(q ‖ Π Bernoulli(ρ)) = −H − Σ_d [μ_d log ρ_d + (1 − μ_d) log(1 − ρ_d)] in closed form (no
longer a constant plus −H: the prior's π now also prices each open gate), SIMPLE's estimator (the exact sample
forward, the marginals' gradient backward; biased). Test time: the mode (the k largest θ_d that are positive).
"""
from __future__ import annotations

from guides.base import GUIDES
from guides.exact_k import ExactKGate
from pyro_ncl.conditional_bernoulli import ConditionalBernoulli


@GUIDES.register("atmost_k")
class AtMostKGate(ExactKGate):

    def posterior(self, logits) -> ConditionalBernoulli:
        """[..., K] θ → the at-most-k posterior (k_t in training, k in evaluation mode), event shape [K]."""
        return ConditionalBernoulli(logits, self.budget.now(self.training), at_most=True)
