"""The exactly-k conditional Bernoulli posterior (``pyro_ncl.conditional_bernoulli``, guide ``exact_k``) and the
budgeted relaxed gate (``budget_st``) against exact enumeration of tiny gates, in float64:
probabilities, normaliser, marginals, entropy, KL and its gradient, the law of the sampler, the mode, and the bias of
each gradient estimator (SIMPLE; straight-through) against the exact gradient of the gated NT-Xent."""
import itertools
import math

import pytest
import scipy.stats
import torch

import sequential_reference as sequential

from guides import BudgetGate, ExactKGate
from models.bernoulli import BernoulliPrior
from pyro_ncl.conditional_bernoulli import ConditionalBernoulli
from pyro_ncl.distributions import StraightThroughBernoulli
from pyro_ncl.likelihoods import nt_xent
from pyro_ncl.ops import safe_normalize

TAU = 0.5


def subsets(K, k):
    """[C(K, k), K] every mask with exactly k ones."""
    return torch.tensor([m for m in itertools.product([0.0, 1.0], repeat=K) if sum(m) == k], dtype=torch.float64)


def enumerate_law(theta, k):
    """theta [K] → (masks [M, K], q [M]) with q(m) ∝ Π σ(θ)^m (1 − σ(θ))^(1 − m) on Σ m = k, written out."""
    masks = subsets(theta.shape[-1], k)
    p = torch.sigmoid(theta)
    weight = (p ** masks * (1 - p) ** (1 - masks)).prod(-1)
    return masks, weight / weight.sum()


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4, 6])
def test_normaliser_marginals_entropy_and_kl_equal_enumeration(k):
    """K = 6: log Z = log Σ_m exp(θ·m), μ = Σ q(m) m, H = −Σ q log q, KL to Π Bernoulli(ρ_d) = Σ q log(q/p); k > 3
    takes the complement's tables."""
    torch.manual_seed(k)
    theta = torch.randn(6, dtype=torch.float64) * 2
    rho = torch.rand(6, dtype=torch.float64) * 0.8 + 0.1
    d = ConditionalBernoulli(theta, k)
    masks, q = enumerate_law(theta, k)
    assert float(d.log_normalizer) == pytest.approx(float(torch.logsumexp(masks @ theta, 0)), abs=1e-12)
    assert torch.allclose(d.marginals, (q[:, None] * masks).sum(0), atol=1e-12)
    assert float(d.marginals.sum()) == pytest.approx(k, abs=1e-12)
    entropy = float(-(q * q.log()).sum())
    assert float(d.entropy()) == pytest.approx(entropy, abs=1e-12)
    log_p = (masks * rho.log() + (1 - masks) * (1 - rho).log()).sum(-1)
    assert float(d.kl_to_bernoulli(rho)) == pytest.approx(float((q * (q.log() - log_p)).sum()), abs=1e-12)
    assert torch.allclose(d.log_prob(masks), q.log(), atol=1e-12)
    assert d.log_prob(torch.ones(6, dtype=torch.float64)).item() == (0.0 if k == 6 else -math.inf)
    # the mode is the most probable mask, and for one π the KL is −H − k log π − (K − k) log(1 − π)
    assert torch.equal(d.mode, masks[q.argmax()])
    pi = 0.3
    assert float(d.kl_to_bernoulli(torch.tensor(pi, dtype=torch.float64))) == pytest.approx(
        -entropy - k * math.log(pi) - (6 - k) * math.log(1 - pi), abs=1e-12)


def test_kl_gradient_equals_the_gradient_of_the_enumerated_kl():
    theta = torch.tensor([1.5, -0.3, 0.7, 2.2, -1.1, 0.0], dtype=torch.float64, requires_grad=True)
    rho = torch.tensor([0.2, 0.5, 0.1, 0.7, 0.3, 0.4], dtype=torch.float64)
    (grad,) = torch.autograd.grad(ConditionalBernoulli(theta, 2).kl_to_bernoulli(rho), theta)
    masks, q = enumerate_law(theta, 2)
    log_p = (masks * rho.log() + (1 - masks) * (1 - rho).log()).sum(-1)
    (expected,) = torch.autograd.grad((q * (q.log() - log_p)).sum(), theta)
    assert torch.allclose(grad, expected, atol=1e-12)


@pytest.mark.parametrize("K,k", [(5, 2), (37, 5), (37, 30), (128, 4), (128, 64), (100, 99)])
def test_the_tree_equals_the_sequential_recursion(K, k):
    """log Z, the marginals and the gradient of g·μ + KL (the tangent pass of the backward) against the sequential
    recursion (``tests/sequential_reference.py``, autograd through it), float64; K not a power of two and k > K/2
    (the complement's tree) included."""
    torch.manual_seed(K + k)
    theta = (torch.randn(3, K, dtype=torch.float64) * 5).requires_grad_()
    weight, rho = torch.randn(3, K, dtype=torch.float64), torch.rand(K, dtype=torch.float64) * 0.8 + 0.1
    d = ConditionalBernoulli(theta, k)
    assert torch.allclose(d.log_normalizer, sequential.log_normalizer(theta, k), rtol=0, atol=1e-10)
    mu_ref = sequential.marginals(theta, k)
    assert torch.allclose(d.marginals, mu_ref, rtol=0, atol=1e-10)
    (grad,) = torch.autograd.grad((weight * d.marginals).sum() + d.kl_to_bernoulli(rho).sum(), theta)
    entropy_ref = sequential.log_normalizer(theta, k) - (theta * mu_ref).sum(-1)
    kl_ref = -entropy_ref - (mu_ref * rho.log() + (1 - mu_ref) * (1 - rho).log()).sum(-1)
    (expected,) = torch.autograd.grad((weight * mu_ref).sum() + kl_ref.sum(), theta)
    assert torch.allclose(grad, expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("k", [64, 1024])
def test_float32_logits_agree_with_float64_at_the_users_scale(k):
    """K = 2048 (the ImageNet-100 recipe's projector), logits up to ±30, float32 (what users train in) against
    the same logits in float64: log Z, μ, H and the KL within 1e-4 relative (μ: 1e-4 absolute), Σ μ = k, H ≥ 0."""
    torch.manual_seed(k)
    theta = torch.rand(4, 2048) * 60 - 30
    d, exact = ConditionalBernoulli(theta, k), ConditionalBernoulli(theta.double(), k)
    pi = torch.tensor(1 / 32)

    def rel(a, b):
        return float(((a.double() - b).abs() / b.abs()).max())
    assert rel(d.log_normalizer, exact.log_normalizer) < 1e-4
    assert float((d.marginals.double() - exact.marginals).abs().max()) < 1e-4
    assert float((d.marginals.double().sum(-1) - k).abs().max()) < 1e-3
    assert rel(d.entropy(), exact.entropy()) < 1e-4 and bool((d.entropy() >= 0).all())
    assert rel(d.kl_to_bernoulli(pi), exact.kl_to_bernoulli(pi.double())) < 1e-4


def test_the_entropy_is_never_negative_and_vanishes_with_the_uncertainty():
    """Logits of scale 300 (K = 128, k = 4), float32: H ≥ 0 and equal to the float64 value to 1e-5 (H = log Z − θ·μ
    gave −0.04 there); with the four largest logits 300 above the rest the law is a point mass up to e^-300 and H
    is 0 to rounding. H is a sum of non-negative terms (the chain rule of the sampler), not a difference of large
    numbers."""
    torch.manual_seed(0)
    theta = torch.rand(8, 128) * 600 - 300
    h = ConditionalBernoulli(theta, 4).entropy()
    assert bool((h >= 0).all())
    assert torch.allclose(h.double(), ConditionalBernoulli(theta.double(), 4).entropy(), rtol=0, atol=1e-5)
    peaked = -torch.rand(8, 128) * 300
    peaked[:, :4] = 300.0
    for logits in (peaked, peaked.double()):
        h = ConditionalBernoulli(logits, 4).entropy()
        assert bool((h >= 0).all()) and float(h.max()) < 1e-6


def chi_square_p(draws, masks, q):
    hits = (draws[:, None, :] == masks[None]).all(-1)
    assert bool(hits.any(-1).all())  # every draw is a mask of the support
    counts = hits.double().sum(0)
    n = draws.shape[0]
    return float(scipy.stats.chi2.sf(((counts - n * q) ** 2 / (n * q)).sum(), len(q) - 1))


@pytest.mark.parametrize("K,k,dtype", [(6, 2, torch.float64), (6, 4, torch.float64), (5, 2, torch.float64),
                                       (7, 5, torch.float64), (6, 3, torch.float32)])
def test_draws_follow_the_exact_law(K, k, dtype):
    """100,000 draws against the enumerated law by a chi-square test (p > 0.001; seeded): k ≤ K/2 and the
    complement's branch, K a power of two and not, float32 logits (float32 weights) too."""
    torch.manual_seed(K * 10 + k)
    theta = torch.randn(K, dtype=torch.float64) * 1.5
    masks, q = enumerate_law(theta, k)
    draws = ConditionalBernoulli(theta.to(dtype), k).sample((100_000,)).double()
    assert chi_square_p(draws, masks, q) > 1e-3


@pytest.mark.parametrize("scale", [4.0, 60.0])
def test_draws_at_the_uniforms_edges_and_their_count(scale):
    """Uniforms 0 and 1 − 1e-12 (which float32 rounds to 1) still draw masks with k ones, also where most shares'
    weights are floored at e^−87 instead of 0 (logits of scale 60: an impossible share or a padded dimension would
    leave a mask without k ones); a draw takes P − 1 uniforms (one per internal node of the tree over K padded to
    a power of two P) and other counts are refused."""
    theta = torch.randn(3, 12) * scale
    d = ConditionalBernoulli(theta, 5)
    assert d.num_uniforms == 15
    for value in (0.0, 1e-40, 1 - 1e-12):
        m = d.from_uniforms(torch.full((2, 3, 15), value, dtype=torch.float64))
        assert bool((m.sum(-1) == 5).all()) and bool(((m == 0) | (m == 1)).all())
    with pytest.raises(ValueError, match="expected 15 uniforms per draw"):
        d.from_uniforms(torch.rand(3, 12))


@pytest.mark.parametrize("K,k", [(6, 2), (7, 4), (8, 3), (5, 1)])
def test_entropy_within_the_active_dimensions_equals_enumeration(K, k):
    """H(m_A), the entropy of the gates on a subset A of the dimensions (the law of m marginalised to A), against
    enumeration; H − H(m_A) ≥ 0."""
    torch.manual_seed(K + 3 * k)
    for _ in range(3):
        theta = torch.randn(K, dtype=torch.float64) * 2
        active = torch.rand(K) < 0.5
        masks, q = enumerate_law(theta, k)
        keys = {}
        for m, p in zip(masks, q):
            key = tuple(m[active].tolist())
            keys[key] = keys.get(key, 0.0) + float(p)
        marginal = torch.tensor(list(keys.values()), dtype=torch.float64)
        d = ConditionalBernoulli(theta, k)
        assert float(d.entropy_within(active)) == pytest.approx(float(-(marginal * marginal.log()).sum()),
                                                                abs=1e-10)
        assert float(d.entropy() - d.entropy_within(active)) >= -1e-12


def test_bad_budgets_and_logits_are_refused_in_one_line():
    theta = torch.randn(2, 6)
    for k in (-1, 7, 2.5):
        with pytest.raises(ValueError, match=r"^ConditionalBernoulli: k must be an integer in \[0, 6\]"):
            ConditionalBernoulli(theta, k)
    bad = theta.clone()
    bad[1, 4] = float("nan")
    with pytest.raises(ValueError, match=r"logits must be finite, got nan at index \[1, 4\]"):
        ConditionalBernoulli(bad, 2, validate_args=True)
    ConditionalBernoulli(bad, 2, validate_args=False)  # no read-back from the device when validation is off


# ---------------------------------------------------------------- the gradient estimators' bias
def batched_nt_xent(z, tau=TAU):
    """z [S, 2B, K] → [S] NT-Xent of each sample of gated views (an independent, batched form)."""
    zn = safe_normalize(z)
    sim = zn @ zn.transpose(-1, -2) / tau
    n = z.shape[-2]
    sim = sim.masked_fill(torch.eye(n, dtype=torch.bool), -math.inf)
    pos = (torch.arange(n) + n // 2) % n
    return (torch.logsumexp(sim, -1) - sim[:, torch.arange(n), pos]).mean(-1)


def test_batched_nt_xent_matches_the_library():
    z = torch.rand(3, 4, 5, dtype=torch.float64)
    assert torch.allclose(batched_nt_xent(z), torch.stack([nt_xent(zi, TAU) for zi in z]), atol=1e-12)


def tiny_problem():
    """Four views (two images) of K = 4 dimensions: z [4, 4] and gate logits θ [4, 4]."""
    g = torch.Generator().manual_seed(7)
    z = torch.rand(4, 4, dtype=torch.float64, generator=g)
    theta = torch.randn(4, 4, dtype=torch.float64, generator=g)
    return z, theta


def joint_masks(per_view):
    """[M, K] masks of one view → [M^4, 4, K] every combination over the four views."""
    index = torch.tensor(list(itertools.product(range(per_view.shape[0]), repeat=4)))
    return per_view[index]


def simple_bias():
    """(exact ∇_θ E_q[f], E_q[SIMPLE gradient]) of f = NT-Xent(normalize(z ⊙ m)) for the exactly-2-of-4 posterior
    of each view: all 6^4 joint masks."""
    z, theta = tiny_problem()
    theta = theta.clone().requires_grad_(True)
    masks = joint_masks(subsets(4, 2))  # [1296, 4, 4]
    d = ConditionalBernoulli(theta, 2)
    prob = d.log_prob(masks).sum(-1).exp()  # [1296]
    (exact,) = torch.autograd.grad((prob * batched_nt_xent(z * masks)).sum(), theta)
    mu = ConditionalBernoulli(theta, 2).marginals
    straight = masks + (mu - mu.detach())
    (simple,) = torch.autograd.grad((prob.detach() * batched_nt_xent(z * straight)).sum(), theta)
    return exact, simple


def cosine(a, b):
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_simple_gradient_bias_measured_by_enumeration():
    """SIMPLE (the guide ``exact_k``'s estimator) is biased: on this problem its expected gradient has cosine 0.866
    with the exact gradient and a relative error ‖E ĝ − g‖/‖g‖ of 0.513 (the figures the README and guides/exact_k.py
    quote); and the library's rsample is that estimator (a Monte-Carlo mean of its gradients agrees)."""
    exact, simple = simple_bias()
    assert cosine(simple, exact) == pytest.approx(0.866, abs=5e-4)
    assert float((simple - exact).norm() / exact.norm()) == pytest.approx(0.513, abs=5e-4)
    torch.manual_seed(0)
    z, theta = tiny_problem()
    theta = theta.clone().requires_grad_(True)
    S = 40_000
    m = ConditionalBernoulli(theta, 2).rsample((S,))
    (mc,) = torch.autograd.grad(batched_nt_xent(z * m).mean(), theta)
    m0 = ConditionalBernoulli(theta.detach(), 2).sample((2000,))
    assert (m0.sum(-1) == 2).all()
    assert float((mc - simple).norm() / simple.norm()) < 0.03


def straight_through_bias(temperature=1.0):
    """(exact ∇_a E_q[f], E[straight-through gradient]) for per-gate Bernoulli(σ(a)) gates (``relaxed_st``,
    ``budget_st``, ``value``, ``relative``) of four views, K = 3 (all 2^12 masks). The straight-through gradient of
    gate (v, d) is ∂f/∂m_vd(m) · σ'((a_vd + L)/T)/T; its expectation given m_vd is taken by quadrature over the
    logistic noise L (in u-space, L = logit u, m = 1 ⟺ u > 1 − σ(a))."""
    z, theta = tiny_problem()
    z, a = z[:, :3], theta[:, :3].clone().requires_grad_(True)
    per_view = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    masks = joint_masks(per_view)  # [4096, 4, 3]
    p = torch.sigmoid(a)
    prob = (p ** masks * (1 - p) ** (1 - masks)).prod(-1).prod(-1)
    (exact,) = torch.autograd.grad((prob * batched_nt_xent(z * masks)).sum(), a)
    # ∂f/∂m at each hard mask
    hard = masks.clone().requires_grad_(True)
    (df,) = torch.autograd.grad(batched_nt_xent(z * hard).sum(), hard)  # [4096, 4, 3]
    u = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000
    a0 = a.detach()
    x = (a0[..., None] + torch.log(u) - torch.log1p(-u)) / temperature  # [4, 3, U]
    slope = torch.sigmoid(x) * (1 - torch.sigmoid(x)) / temperature
    on = u > 1 - torch.sigmoid(a0)[..., None]
    c1 = (slope * on).mean(-1) / torch.sigmoid(a0)      # E[slope | m = 1]
    c0 = (slope * ~on).mean(-1) / torch.sigmoid(-a0)    # E[slope | m = 0]
    c = torch.where(masks > 0.5, c1, c0)
    expected_st = (prob.detach()[:, None, None] * df * c).sum(0)
    return exact, expected_st


def test_straight_through_gradient_bias_measured_by_enumeration():
    """The straight-through estimator of the per-gate Bernoulli guides (``budget_st``, ``relaxed_st``, ``value``,
    ``relative``, ``image``) at T = 1: its expected gradient has cosine 0.968 with the exact gradient and a
    relative error of 0.495 on this problem; the library's StraightThroughBernoulli gives it (Monte Carlo)."""
    exact, expected_st = straight_through_bias()
    assert cosine(expected_st, exact) == pytest.approx(0.968, abs=5e-4)
    assert float((expected_st - exact).norm() / exact.norm()) == pytest.approx(0.495, abs=5e-4)
    torch.manual_seed(0)
    z, theta = tiny_problem()
    a = theta[:, :3].clone().requires_grad_(True)
    m = StraightThroughBernoulli(a, 1.0).rsample((100_000,))
    (mc,) = torch.autograd.grad(batched_nt_xent(z[:, :3] * m).mean(), a)
    assert float((mc - expected_st).norm() / expected_st.norm()) < 0.03


# ---------------------------------------------------------------- the guides
def test_exact_k_guide_budget_follows_the_prior_and_its_gate_term_is_the_exact_kl():
    prior = BernoulliPrior(0.25)
    guide = ExactKGate(5, 8, 8, prior, kl_weight=0.1).double()
    assert guide.k == 2  # round(0.25 · 8)
    h, z = torch.randn(3, 5, dtype=torch.float64), torch.rand(3, 8, dtype=torch.float64)
    theta = guide.view_logits(h, z).detach()
    assert torch.allclose(theta, z / guide.scale(), atol=1e-12)  # the head starts at 0: a soft top-k of z
    guide.eval()
    assert torch.equal(guide.mode(h, z), ConditionalBernoulli(theta, 2).mode)
    assert torch.allclose(guide.probs(h, z).sum(-1), torch.full((3,), 2.0, dtype=torch.float64))
    masks, q = enumerate_law(theta[0], 2)
    assert float(guide.entropy(h, z)[0].detach()) == pytest.approx(float(-(q * q.log()).sum()), abs=1e-10)
    kl = guide.closed_form_kl(theta, torch.tensor(0.25, dtype=torch.float64))
    assert float(kl[0]) == pytest.approx(float(-(q * q.log()).sum() * -1 - 2 * math.log(0.25) - 6 * math.log(0.75)),
                                         abs=1e-10)
    assert ExactKGate(5, 8, 8, BernoulliPrior(0.05)).k == 2  # round(0.4) = 0: at least 2
    assert ExactKGate(5, 8, 128, BernoulliPrior(0.03125)).k == 4 and ExactKGate(5, 8, 128, BernoulliPrior(0.5)).k == 64


def test_budget_gate_thresholds_at_the_kth_entry():
    guide = BudgetGate(5, 8, 6, BernoulliPrior(0.5))  # k = 3
    guide.eval()
    h, z = torch.randn(4, 5), torch.rand(4, 6)
    a = guide.view_logits(h, z)
    top = torch.topk(z, 4, dim=-1).values
    assert torch.allclose(a, (z - 0.5 * (top[:, 2:3] + top[:, 3:4])) / guide.scale(), atol=1e-5)
    assert torch.equal(guide.mode(h, z).sum(-1), torch.full((4,), 3.0))


# ---------------------------------------------------------------- at most k (guide atmost_k)
def at_most_law(theta, k):
    """theta [K] → (masks [M, K] with at most k ones, q [M] ∝ exp(θ·m)), written out."""
    K = theta.shape[-1]
    masks = torch.tensor([m for m in itertools.product([0.0, 1.0], repeat=K) if sum(m) <= k], dtype=torch.float64)
    return masks, torch.softmax(masks @ theta, 0)


@pytest.mark.parametrize("K,k", [(5, 2), (6, 3), (7, 5), (4, 4), (3, 1)])
def test_at_most_k_equals_enumeration(K, k):
    """q(m) ∝ exp(θ·m) on masks with at most k ones: log Z, μ, H, the KL to Π Bernoulli(ρ_d) and its gradient
    (with the marginals' through a weighted sum), log q, the mode and the entropy within a subset of the dimensions,
    against enumeration in float64 (no complement and no centring: a constant added to θ changes this law)."""
    torch.manual_seed(K * 7 + k)
    theta = (torch.randn(K, dtype=torch.float64) * 2).requires_grad_()
    rho = torch.rand(K, dtype=torch.float64) * 0.8 + 0.1
    masks, q = at_most_law(theta, k)
    d = ConditionalBernoulli(theta, k, at_most=True)
    log_p = (masks * rho.log() + (1 - masks) * (1 - rho).log()).sum(-1)
    kl = (q * (q.log() - log_p)).sum()
    weight = torch.arange(K, dtype=torch.float64)
    assert float(d.log_normalizer.detach()) == pytest.approx(float(torch.logsumexp(masks @ theta.detach(), 0)),
                                                              abs=1e-10)
    assert torch.allclose(d.marginals, q @ masks, atol=1e-10)
    assert float(d.entropy().detach()) == pytest.approx(float(-(q * q.log()).sum().detach()), abs=1e-10)
    assert float(d.kl_to_bernoulli(rho).detach()) == pytest.approx(float(kl.detach()), abs=1e-10)
    assert torch.allclose(d.log_prob(masks), q.log(), atol=1e-10)
    assert torch.equal(d.mode, masks[q.argmax()])
    (grad,) = torch.autograd.grad(d.kl_to_bernoulli(rho) + (d.marginals * weight).sum(), theta)
    (expected,) = torch.autograd.grad(kl + (q @ masks * weight).sum(), theta)
    assert torch.allclose(grad, expected, atol=1e-9)
    active = torch.arange(K) % 2 == 0
    marginal = {}
    for m, p in zip(masks, q.detach()):
        marginal[tuple(m[active].tolist())] = marginal.get(tuple(m[active].tolist()), 0.0) + float(p)
    p = torch.tensor(list(marginal.values()), dtype=torch.float64)
    assert float(d.entropy_within(active)) == pytest.approx(float(-(p * p.log()).sum()), abs=1e-10)


@pytest.mark.parametrize("K,k", [(5, 2), (6, 4)])
def test_at_most_k_draws_follow_the_exact_law(K, k):
    """100,000 draws (the count first, one more uniform) against the enumerated law, chi-square p > 0.001."""
    torch.manual_seed(K + k)
    theta = torch.randn(K, dtype=torch.float64) * 1.5
    masks, q = at_most_law(theta, k)
    d = ConditionalBernoulli(theta, k, at_most=True)
    assert d.num_uniforms == max(2, 1 << (K - 1).bit_length())
    assert chi_square_p(d.sample((100_000,)), masks, q) > 1e-3
