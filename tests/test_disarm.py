"""DisARM for the exact Bernoulli guide: exact expectation by enumeration, variance against the score function with a
decaying baseline, and one SVI step of the whole system."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from pyro.infer import TraceGraph_ELBO

from guides import GUIDES, DisarmGate, ExactBernoulliGate
from models import ContrastiveModel
from models.bernoulli import BernoulliPrior
from pyro_ncl import distributed
from pyro_ncl.batch import EncodedBatch
from pyro_ncl.config import Config
from pyro_ncl.disarm import DisARM_ELBO, antithetic_partner, disarm_weights
from pyro_ncl.likelihoods import LIKELIHOODS, NTXent
from pyro_ncl.system import build_system
from pyro_ncl.train import SVITrainer

TAU, PI = 0.5, 0.4
# 4 views (two images: rows i and i + 2 are positives) × K = 3: 12 Bernoullis, distinct logits on both sides of 0
A = torch.tensor([[-1.3, 0.4, 2.0], [0.9, -0.2, 1.1], [-0.6, 1.7, -2.2], [0.1, 0.6, -0.9]], dtype=torch.float64)
Z = torch.tensor([[0.9, 0.2, 0.4], [0.1, 0.8, 0.3], [0.7, 0.5, 0.1], [0.2, 0.3, 0.9]], dtype=torch.float64)


def normalize(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # a zero row (all gates closed) stays zero


def nt_xent_batched(m):
    """Hand-built NT-Xent of the gated views: masks m [S, 4, 3] → [S] mean over the 4 anchors of
    −log softmax_{j ≠ i}(cos/τ) at the positive j = i ± 2."""
    zn = normalize(normalize(Z) * m)
    logits = zn @ zn.transpose(-1, -2) / TAU
    logits = logits.masked_fill(torch.eye(4, dtype=torch.bool), float("-inf"))
    positive = torch.tensor([2, 3, 0, 1])
    return -logits.log_softmax(-1)[:, torch.arange(4), positive].mean(-1)


def all_masks():
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=12)), dtype=torch.float64).view(-1, 4, 3)


def true_gradient(cost):
    """∇_a E_q[cost(m)] by enumerating all 2^12 masks."""
    a = A.clone().requires_grad_(True)
    masks = all_masks()
    log_q = (masks * F.logsigmoid(a) + (1 - masks) * F.logsigmoid(-a)).sum((1, 2))
    return torch.autograd.grad((log_q.exp() * cost(masks, a)).sum(), a)[0]


def pair_states(p):
    """Per Bernoulli, the antithetic states (b, b̃) with nonzero probability and their probabilities: (1, 1) w.p.
    max(0, 2p − 1), (0, 0) w.p. max(0, 1 − 2p), (1, 0) and (0, 1) w.p. min(p, 1 − p) each → b, b̃, prob [12, 3]."""
    p = p.flatten()
    both = (p >= 0.5).double()  # the third state: (1, 1) when p ≥ ½, else (0, 0)
    b = torch.stack([both, torch.ones_like(p), torch.zeros_like(p)], 1)
    b_tilde = torch.stack([both, torch.zeros_like(p), torch.ones_like(p)], 1)
    prob = torch.stack([(2 * p - 1).abs(), torch.minimum(p, 1 - p), torch.minimum(p, 1 - p)], 1)
    return b, b_tilde, prob


def test_expected_disarm_gradient_equals_enumeration():
    truth = true_gradient(lambda masks, a: nt_xent_batched(masks))
    b1, bt1, prob1 = pair_states(torch.sigmoid(A))
    states = torch.cartesian_prod(*[torch.arange(3)] * 12)  # [3^12, 12]
    rows = torch.arange(12)
    b, b_tilde = b1[rows, states], bt1[rows, states]
    prob = prob1[rows, states].prod(1)
    assert prob.sum().item() == pytest.approx(1.0, abs=1e-12)
    marginal = torch.sigmoid(A).flatten()
    assert torch.allclose(prob @ b, marginal) and torch.allclose(prob @ b_tilde, marginal)  # both Bernoulli(σ(a))
    f_b, f_t = nt_xent_batched(b.view(-1, 4, 3)), nt_xent_batched(b_tilde.view(-1, 4, 3))
    weights = disarm_weights(A.flatten().expand_as(b), b, b_tilde, f_b[:, None], f_t[:, None])
    expected = (prob[:, None] * weights).sum(0).view(4, 3)
    assert (expected - truth).abs().max().item() < 1e-9, (expected, truth)
    assert truth.abs().max() > 1e-2 and (truth.abs() > 1e-4).all()  # far above the tolerance


def test_antithetic_partner_has_the_pair_law():
    """b ~ Bernoulli(σ(a)) and b̃ = antithetic_partner(a, b): the four states occur with the enumerated
    probabilities (within 5 standard errors)."""
    torch.manual_seed(0)
    n, a = 200_000, A.flatten()
    b = torch.bernoulli(torch.sigmoid(a).expand(n, -1))
    b_tilde = antithetic_partner(a.expand(n, -1), b)
    p = torch.sigmoid(a)
    expect = {(1, 1): (2 * p - 1).clamp_min(0), (0, 0): (1 - 2 * p).clamp_min(0),
              (1, 0): torch.minimum(p, 1 - p), (0, 1): torch.minimum(p, 1 - p)}
    for (x, y), prob in expect.items():
        freq = ((b == x) & (b_tilde == y)).double().mean(0)
        assert ((freq - prob).abs() <= 5 * (prob * (1 - prob) / n).sqrt() + 1e-9).all(), (x, y)


class FixedLogits:
    """A guide whose gate head is replaced by the fixed logits A [4, 3], one row per view."""

    def __init__(self, kl_weight, **kw):
        super().__init__(1, 4, 3, BernoulliPrior(PI), kl_weight=kl_weight, **kw)
        self.a = A.clone().requires_grad_(True)
        self.double()

    def logits(self, h):
        return self.a


class FixedDisarm(FixedLogits, DisarmGate):
    pass


class FixedScoreFunction(FixedLogits, ExactBernoulliGate):
    pass


def pyro_problem():
    """The same problem as a Pyro program: two images (four views) forming the whole dataset (plate scale 1), so
    the loss is 4 · NT-Xent + β Σ_views Σ_d [log q − log p]."""
    return EncodedBatch(h=torch.zeros(4, 1, dtype=torch.float64), z=Z.clone(), index=torch.arange(2), num_images=2)


def elbo_gradients(guide, elbo, draws, burn_in=0):
    model = ContrastiveModel(NTXent(TAU), guide.prior, kl_weight=guide.kl_weight, analytic_kl=guide.analytic_kl)
    batch, grads = pyro_problem(), []
    for i in range(burn_in + draws):
        guide.a.grad = None
        elbo.loss_and_grads(model.model, guide.guide, batch)
        if i >= burn_in:
            grads.append(guide.a.grad.clone())
    return torch.stack(grads)


@pytest.fixture
def one_thread():
    """4 × 3 tensors: one thread, so that a busy machine's OpenMP spinning does not slow 500 tiny steps 20-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_disarm_has_lower_variance_than_the_decaying_baseline(one_thread):
    """The contrastive term alone (β = 0: both guides estimate ∇ E[4 · NT-Xent]), 200 draws each."""
    truth = true_gradient(lambda masks, a: 4 * nt_xent_batched(masks))
    torch.manual_seed(0)
    disarm_guide = FixedDisarm(kl_weight=0.0)
    assert isinstance(disarm_guide.make_elbo(), DisARM_ELBO)
    disarm = elbo_gradients(disarm_guide, disarm_guide.make_elbo(), draws=200)
    torch.manual_seed(0)
    score = elbo_gradients(FixedScoreFunction(kl_weight=0.0, baseline="decaying"), TraceGraph_ELBO(), draws=200,
                           burn_in=100)
    # the estimator through the Pyro program is unbiased (within 4 standard errors on each of the 12 logits)...
    stderr = disarm.std(0) / math.sqrt(disarm.shape[0])
    assert ((disarm.mean(0) - truth).abs() < 4 * stderr).all(), (disarm.mean(0), truth)
    # ...and its variance is below the score function's with a decaying-average baseline
    var_disarm, var_score = disarm.var(0).sum().item(), score.var(0).sum().item()
    assert var_disarm < 0.75 * var_score, (var_disarm, var_score)


def test_disarm_gate_term_is_the_closed_form_kl():
    """Same draws at β = 1 and β = 0: the KL factor is the same at b and b̃, so the DisARM weights are unchanged and
    the gradients differ by exactly β ∇ Σ_views Σ_d KL(Bern(σ(a)) ‖ Bern(π)), written out."""
    grads = []
    for beta in (1.0, 0.0):
        torch.manual_seed(5)
        guide = FixedDisarm(kl_weight=beta)
        assert guide.analytic_kl
        grads.append(elbo_gradients(guide, guide.make_elbo(), draws=3))
    p = torch.sigmoid(A)
    kl_grad = p * (1 - p) * (A - math.log(PI / (1 - PI)))
    assert torch.allclose(grads[0] - grads[1], kl_grad.expand(3, 4, 3), atol=1e-12)
    assert (grads[1] != 0).any()


def tiny_system(**overrides):
    config = Config(**{**dict(guide="disarm", width=4, hidden_dim=16, feature_dim=8, batch_size=4, epochs=1,
                              kl_weight=0.05), **overrides}).resolved()
    torch.manual_seed(0)
    return config, build_system(config, in_channels=1)


def test_svi_step_loss_is_the_antithetic_average():
    config, system = tiny_system()
    trainer = SVITrainer(system, config, steps_per_epoch=1)
    assert isinstance(trainer.elbo, DisARM_ELBO)  # named by the guide, not by the trainer
    x1, x2, n = torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28), 16
    batch = system.encode(x1, x2, torch.arange(4), n)  # train-mode BatchNorm: the trainer's encode gives the same
    torch.manual_seed(3)
    loss = trainer.loss_and_grads(x1, x2, None, torch.arange(4), n)
    b, b_tilde = trainer.elbo.last_pair["gate"]
    assert (b != b_tilde).any() and set(b.unique().tolist()) <= {0.0, 1.0}

    a = system.guide.head(batch.h.detach()).detach()
    p, pi = torch.sigmoid(a), config.prior_prob
    kl = (p * torch.log(p / pi) + (1 - p) * torch.log((1 - p) / (1 - pi))).sum(-1).mean()

    def per_view_objective(mask):  # mean NT-Xent of the gated views + β · mean_v Σ_d KL, written out
        zn = normalize(normalize(batch.z.detach()) * mask)
        logits = (zn @ zn.T / config.temperature).masked_fill(torch.eye(8, dtype=torch.bool), float("-inf"))
        contrastive = -logits.log_softmax(-1)[torch.arange(8), (torch.arange(8) + 4) % 8].mean()
        return contrastive + config.kl_weight * kl, contrastive

    (f_b, c_b), (f_t, _) = per_view_objective(b), per_view_objective(b_tilde)
    assert abs(f_b - f_t) > 1e-4  # the average differs from either objective
    assert loss == pytest.approx(0.5 * (f_b + f_t).item(), rel=1e-5)
    assert system.step_stats()["contrastive"] == pytest.approx(c_b.item(), rel=1e-5)  # logged: the guide's draw
    assert system.guide.head[0].weight.grad.abs().sum() > 0
    assert math.isfinite(trainer.step(x1, x2, None, torch.arange(4), n))


def test_disarm_is_refused_under_several_processes():
    config = Config(guide="disarm").resolved()
    with pytest.raises(ValueError, match="--guide disarm weighs each gate logit's gradient .* one process"):
        distributed.check_supported(config, LIKELIHOODS["nt_xent"], GUIDES["disarm"], size=2)
    distributed.check_supported(config, LIKELIHOODS["nt_xent"], GUIDES["disarm"], size=1)


def test_disarm_elbo_refuses_a_non_bernoulli_site():
    import pyro
    import pyro.distributions as dist

    def model():
        pyro.sample("k", dist.Poisson(torch.tensor(2.0)))

    def guide():
        pyro.sample("k", dist.Poisson(torch.tensor(3.0)))

    with pytest.raises(NotImplementedError, match="'k' is a Poisson; DisARM needs a Bernoulli"):
        DisARM_ELBO().loss_and_grads(model, guide)
