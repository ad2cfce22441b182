"""BCL, triCL and SimLAP likelihoods against independent plain-Python computations."""
import math
import types

import pytest
import torch

from pyro_ncl.likelihoods import LIKELIHOODS, nt_xent
from pyro_ncl.likelihoods.bcl import bcl_loss, bcl_weights
from pyro_ncl.likelihoods.simlap import SimLAP, simlap_loss, simlap_pair_masks
from pyro_ncl.likelihoods.tricl import decorrelation_penalty, tricl_loss

VIEWS = [[1.0, 0.0, 2.0], [0.5, 1.0, 0.0], [0.0, 0.2, 1.0],   # first views of images 0, 1, 2
         [1.0, 0.3, 1.5], [0.2, 1.0, 0.1], [0.1, 0.0, 1.0]]   # second views


def unit(v):
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


def dot(u, v):
    return sum(a * b for a, b in zip(u, v))


def softplus(x):
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------- BCL

def bcl_weight_by_hand(u, alpha, beta, tau_p):
    tau_m = 1 - tau_p
    a = (1 - 2 * alpha) * (tau_m - tau_p) + 1e-3
    b = 2 * (alpha * tau_m + (1 - alpha) * tau_p)
    F = (-b + math.sqrt(b * b + 4 * a * u)) / (2 * a)
    phi1, phi2 = 2 * (1 - F), 2 * F
    x_tn = alpha * phi1 + (1 - alpha) * phi2
    x_fn = (1 - alpha) * phi1 + alpha * phi2
    x_htn = (alpha * (1 - beta) * phi1 + (1 - alpha) * beta * phi2) / (alpha * (1 - beta) + (1 - alpha) * beta)
    return x_htn / (tau_m * x_tn + tau_p * x_fn)


def test_bcl_weights_by_hand():
    u = [0.25, 0.5, 0.75, 1.0]                       # the empirical CDF of a row of 4 distinct negatives
    for alpha, beta, tau_p in ((0.9, 0.5, 0.1), (0.8, 1.0, 0.1), (0.6, 0.7, 0.2), (1.0, 0.5, 0.1)):
        got = bcl_weights(torch.tensor([u], dtype=torch.float64), alpha, beta, tau_p)[0].tolist()
        want = [bcl_weight_by_hand(x, alpha, beta, tau_p) for x in u]
        assert all(abs(g - w) < 1e-10 for g, w in zip(got, want)), (alpha, beta, got, want)
    # hardness β > 0.5 up-weights the hardest negatives (largest û) relative to β = 0.5
    w_unb = bcl_weights(torch.tensor(u, dtype=torch.float64), 0.9, 0.5, 0.1)
    w_hard = bcl_weights(torch.tensor(u, dtype=torch.float64), 0.9, 1.0, 0.1)
    assert (w_hard / w_unb)[-1] > (w_hard / w_unb)[0]


def test_bcl_beta_half_gives_unbiased_weights():
    # β = 0.5: x_htn = (αφ1 + (1−α)φ2)/2 / (1/2) = x_tn, so ω = x_tn / (τ⁻ x_tn + τ⁺ x_fn)
    alpha, tau_p = 0.8, 0.1
    tau_m = 1 - tau_p
    a = (1 - 2 * alpha) * (tau_m - tau_p) + 1e-3
    b = 2 * (alpha * tau_m + (1 - alpha) * tau_p)
    u = [0.1, 0.3, 0.5, 0.9, 1.0]
    got = bcl_weights(torch.tensor(u, dtype=torch.float64), alpha, 0.5, tau_p).tolist()
    for x, g in zip(u, got):
        F = (-b + math.sqrt(b * b + 4 * a * x)) / (2 * a)
        x_tn = alpha * 2 * (1 - F) + (1 - alpha) * 2 * F
        x_fn = (1 - alpha) * 2 * (1 - F) + alpha * 2 * F
        assert abs(g - x_tn / (tau_m * x_tn + tau_p * x_fn)) < 1e-10
    # α = β = 0.5: x_tn = x_fn = x_htn = 1 whatever F, so ω ≡ 1 and BCL is NT-Xent
    w = bcl_weights(torch.tensor(u, dtype=torch.float64), 0.5, 0.5, tau_p)
    assert torch.allclose(w, torch.ones_like(w), atol=1e-12)
    z = torch.tensor(VIEWS, dtype=torch.float64)
    assert abs(bcl_loss(z, 0.5, 0.5, 0.5, 0.1).item() - nt_xent(z, 0.5).item()) < 1e-10


def bcl_loss_by_hand(views, t, alpha, beta, tau_p):
    n = len(views)
    zs = [unit(v) for v in views]
    total = 0.0
    for i in range(n):
        p = (i + n // 2) % n
        negs = [j for j in range(n) if j not in (i, p)]
        s = {j: math.exp(dot(zs[i], zs[j]) / t) for j in negs}
        pos = math.exp(dot(zs[i], zs[p]) / t)
        ng = 0.0
        for j in negs:
            u = sum(1 for k in negs if s[k] <= s[j]) / len(negs)
            ng += bcl_weight_by_hand(u, alpha, beta, tau_p) * s[j]
        total += -math.log(pos / (pos + ng))
    return total / n


def test_bcl_loss_by_hand():
    z = torch.tensor(VIEWS, dtype=torch.float64)
    for t, alpha, beta in ((0.5, 0.9, 0.5), (0.2, 0.8, 1.0), (1.0, 0.7, 0.8)):
        got = bcl_loss(z, t, alpha, beta, 0.1).item()
        assert abs(got - bcl_loss_by_hand(VIEWS, t, alpha, beta, 0.1)) < 1e-10
    # ties: û counts every negative ≤ s_ij (two equal views share the upper rank)
    tied = [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0], [0.2, 1.0]]
    got = bcl_loss(torch.tensor(tied, dtype=torch.float64), 0.5, 0.9, 0.8, 0.1).item()
    assert abs(got - bcl_loss_by_hand(tied, 0.5, 0.9, 0.8, 0.1)) < 1e-10


def test_bcl_registered_and_differentiable():
    cfg = types.SimpleNamespace(temperature=0.5, bcl_alpha=0.9, bcl_beta=0.9, bcl_class_prior=0.1)
    lik = LIKELIHOODS["bcl"].build(3, cfg, 10)
    assert not lik.requires_labels
    z = torch.tensor(VIEWS, requires_grad=True)
    loss = lik(z, None)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(z.grad).all()
    with pytest.raises(ValueError):
        bcl_weights(torch.zeros(1), 1.0, 1.0, 0.1)               # α(1−β) + (1−α)β = 0


# ---------------------------------------------------------------- triCL

def tricl_by_hand(views, theta, tau, lam, symmetric=True):
    n, k = len(views), len(views[0])
    zs = [unit(v) for v in views]
    s = [softplus(t) for t in theta]
    total = 0.0
    for i in range(n):
        scale = s if (symmetric or i < n // 2) else [1.0] * k
        logit = {j: sum(zs[i][d] * scale[d] * zs[j][d] for d in range(k)) / tau for j in range(n) if j != i}
        p = (i + n // 2) % n
        total += -(logit[p] - math.log(sum(math.exp(v) for v in logit.values())))
    return total / n + lam * penalty_by_hand(zs)


def penalty_by_hand(zs):
    n, k = len(zs), len(zs[0])
    acc = 0.0
    for d in range(k):
        for e in range(k):
            c = sum(zs[r][d] * zs[r][e] for r in range(n)) / n
            acc += (c - (1.0 if d == e else 0.0)) ** 2
    return acc / (k * k)


def test_tricl_loss_by_hand():
    theta = [0.3, -0.5, 1.2]
    z = torch.tensor(VIEWS, dtype=torch.float64)
    th = torch.tensor(theta, dtype=torch.float64)
    for tau, lam, sym in ((0.2, 1.0, True), (0.5, 0.0, True), (0.2, 2.0, False)):
        got = tricl_loss(z, th, tau, lam, symmetric=sym).item()
        assert abs(got - tricl_by_hand(VIEWS, theta, tau, lam, sym)) < 1e-10
    zs = [unit(v) for v in VIEWS]
    assert abs(decorrelation_penalty(torch.tensor(zs, dtype=torch.float64)).item() - penalty_by_hand(zs)) < 1e-12


def test_tricl_scale_learns_and_ranks():
    torch.manual_seed(0)
    cfg = types.SimpleNamespace(temperature=0.2, tricl_decorrelation=1.0)
    lik = LIKELIHOODS["tricl"].build(3, cfg, 10)
    torch.manual_seed(0)
    assert torch.allclose(lik.theta.detach(), 0.1 * torch.randn(3))     # θ₀ = 0.1·N(0,1), global RNG
    before = lik.importance.clone()
    assert not lik.importance.requires_grad
    theta0 = lik.theta.tolist()
    opt = torch.optim.SGD(lik.parameters(), lr=0.5)
    loss = lik(torch.tensor(VIEWS), None)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert not torch.allclose(lik.importance, before)
    # learns: the step is θ − 0.5 ∇θ, the gradient by central differences of the by-hand loss
    eps = 1e-6
    for d, t in enumerate(theta0):
        up, down = list(theta0), list(theta0)
        up[d], down[d] = t + eps, t - eps
        grad = (tricl_by_hand(VIEWS, up, 0.2, 1.0) - tricl_by_hand(VIEWS, down, 0.2, 1.0)) / (2 * eps)
        assert abs(lik.theta[d].item() - (t - 0.5 * grad)) < 1e-5
    # ranks: importance is s = softplus(θ) by hand, so dimensions rank in the order of θ
    theta = lik.theta.tolist()
    assert all(abs(i - softplus(t)) < 1e-6 for i, t in zip(lik.importance.tolist(), theta))
    assert lik.importance.argsort(descending=True).tolist() == sorted(range(3), key=lambda d: -theta[d])


# ---------------------------------------------------------------- SimLAP

LABELS = [0, 0, 1, 1, 2, 2]
PARTNER = [1, 2, 0, 2, 1, 0]                                 # a permutation of LABELS


def test_simlap_masks_hand_built():
    y = torch.tensor(LABELS + LABELS)
    y2 = torch.tensor(PARTNER + PARTNER)
    pos, neg = simlap_pair_masks(y, y2)
    n = len(y)
    for i in range(n):
        for j in range(n):
            assert bool(pos[i, j]) == (j != i and int(y[j]) == int(y2[i]))
            assert bool(neg[i, j]) == (int(y[j]) not in (int(y[i]), int(y2[i])))
    # anchor 0 (class 0, partner 1): positives are exactly the 4 views of class 1, negatives the 4 of class 2
    assert pos[0].nonzero().flatten().tolist() == [2, 3, 8, 9]
    assert neg[0].nonzero().flatten().tolist() == [4, 5, 10, 11]
    # partner = own class: every other view of that class is a positive, self excluded; nothing of it is negative
    pos, neg = simlap_pair_masks(torch.tensor([0, 0, 1, 0, 0, 1]), torch.tensor([0, 1, 1, 0, 1, 1]))
    assert pos[0].nonzero().flatten().tolist() == [1, 3, 4]
    assert neg[0].nonzero().flatten().tolist() == [2, 5]


def simlap_by_hand(views, labels, partner, gates, tau):
    n = len(views)
    zs = [unit(v) for v in views]
    y, y2, g = labels + labels, partner + partner, gates + gates
    losses = []
    for i in range(n):
        logit = [sum(zs[i][d] * g[i][d] ** 2 * zs[j][d] for d in range(len(zs[i]))) / tau for j in range(n)]
        pos = [j for j in range(n) if j != i and y[j] == y2[i]]
        neg = [j for j in range(n) if y[j] not in (y[i], y2[i])]
        if not pos:
            continue
        neg_sum = sum(math.exp(logit[j]) for j in neg)
        losses.append(sum(-math.log(math.exp(logit[p]) / (math.exp(logit[p]) + neg_sum)) for p in pos) / len(pos))
    return sum(losses) / len(losses)


def gate_by_hand(lik, a, b):
    e = [(x + y) / 2 for x, y in zip(lik.embedding.weight[a].tolist(), lik.embedding.weight[b].tolist())]
    w1, b1 = lik.mlp[0].weight.tolist(), lik.mlp[0].bias.tolist()
    w2, b2 = lik.mlp[2].weight.tolist(), lik.mlp[2].bias.tolist()
    h = [max(0.0, dot(row, e) + c) for row, c in zip(w1, b1)]
    return [sigmoid(dot(row, h) + c) for row, c in zip(w2, b2)]


def test_simlap_loss_by_hand():
    torch.manual_seed(1)
    views = [v for v in VIEWS] + [[0.3, 0.9, 0.4], [1.0, 1.0, 0.0], [0.0, 0.5, 0.5],
                                   [0.2, 0.1, 0.9], [0.7, 0.7, 0.7], [0.4, 0.0, 0.3]]
    lik = SimLAP(3, 3, temperature=0.1, gate_penalty=0.0, embed_dim=4, hidden_dim=5).double()
    z = torch.tensor(views, dtype=torch.float64)
    y, y2 = torch.tensor(LABELS), torch.tensor(PARTNER)
    gates = [gate_by_hand(lik, a, b) for a, b in zip(LABELS, PARTNER)]
    assert torch.allclose(lik.gate(y, y2), torch.tensor(gates, dtype=torch.float64), atol=1e-12)
    want = simlap_by_hand(views, LABELS, PARTNER, gates, 0.1)
    assert abs(lik(z, y, partner=y2).item() - want) < 1e-9
    # gate penalty: + w · mean g(1 − g)
    lik.gate_penalty = 0.3
    pen = sum(g * (1 - g) for row in gates for g in row) / (len(gates) * 3)
    assert abs(lik(z, y, partner=y2).item() - (want + 0.3 * pen)) < 1e-9
    # anchors without negatives (two classes, partner ≠ own) contribute 0 and keep a finite gradient
    g = torch.full((2, 3), 0.7, dtype=torch.float64)
    zz = torch.tensor(VIEWS[:4], dtype=torch.float64, requires_grad=True)
    loss = simlap_loss(zz, torch.tensor([0, 1]), torch.tensor([1, 0]), g, 0.1)
    loss.backward()
    assert abs(loss.item() - simlap_by_hand(VIEWS[:4], [0, 1], [1, 0], g.tolist(), 0.1)) < 1e-9
    assert torch.isfinite(zz.grad).all()


def test_simlap_partner_from_global_rng_and_labels_required():
    cfg = types.SimpleNamespace(temperature=0.1, simlap_gate_penalty=0.1, hidden_dim=8)
    lik = LIKELIHOODS["simlap"].build(3, cfg, 3)
    assert lik.requires_labels
    z, y = torch.tensor(VIEWS + VIEWS), torch.tensor(LABELS)
    torch.manual_seed(5)
    a = lik(z, y)
    torch.manual_seed(5)
    b = lik(z, y)
    assert a.item() == b.item() and a.ndim == 0
    with pytest.raises(ValueError, match="labels"):
        lik(z, None)
