"""The objective: a valid ELBO for the gate, the contrastive factor's scaling, and the ungated special case."""
import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import TraceGraph_ELBO

from guides import AmortizedGate
from models import ContrastiveModel
from models.priors import BernoulliPrior
from pyro_ncl.batch import EncodedBatch
from pyro_ncl.config import Config
from pyro_ncl.likelihoods import NTXent, nt_xent
from pyro_ncl.system import build_system

PI = 0.3
LOGITS = torch.tensor([-3.0, -1.5, -0.5, 0.0, 0.4, 1.2, 2.5, 4.0], dtype=torch.float64)


def analytic_kl_and_grad(a, pi):
    """Σ_d KL(Bern(σ(a_d)) ‖ Bern(π)) and its gradient σ'(a)(a − logit π), written out independently."""
    p = torch.sigmoid(a)
    kl = p * torch.log(p / pi) + (1 - p) * torch.log((1 - p) / (1 - pi))
    return kl.sum().item(), p * (1 - p) * (a - math.log(pi / (1 - pi)))


class FixedLogitsGate(AmortizedGate):
    """The default guide with its gate head replaced by fixed logits a (a leaf tensor)."""

    def __init__(self, logits, **kw):
        super().__init__(1, 1, logits.numel(), **kw)
        self.a = logits.clone().requires_grad_(True)

    def logits(self, h):
        return self.a.expand(h.shape[0], -1)


def whole_dataset_batch(num_dims):
    """Both images (four views) of a two-image dataset: plate scale 1, so the loss is Σ over the 4 views."""
    z = torch.rand(4, num_dims, dtype=torch.float64)
    return EncodedBatch(h=torch.zeros(4, 1, dtype=torch.float64), z=z, index=torch.arange(2), num_images=2)


def gate_term_draws(model, guide, batch, params, draws=2000):
    """Mean over draws of the loss with the contrastive factor blocked, and of its gradient in ``params``."""
    elbo, blocked = TraceGraph_ELBO(), poutine.block(model, hide=["contrastive"])
    total, grad = 0.0, torch.zeros_like(params)
    for _ in range(draws):
        params.grad = None
        total += elbo.loss_and_grads(blocked, guide, batch)
        grad += params.grad
    return total / draws, grad / draws


def test_default_gate_term_is_the_exact_kl(temperature=1.0):
    prior = BernoulliPrior(PI)
    guide = FixedLogitsGate(LOGITS, prior=prior, temperature=temperature)
    model = ContrastiveModel(NTXent(0.2), prior)
    mean, grad = gate_term_draws(model.model, guide.guide, whole_dataset_batch(8), guide.a)
    kl, kl_grad = analytic_kl_and_grad(LOGITS, PI)
    assert abs(mean / 4 - kl) / kl < 0.02  # four views, each with the same logits
    assert F.cosine_similarity(grad / 4, kl_grad, dim=0) >= 0.99


def test_straight_through_sample_is_exactly_bernoulli():
    """Monte-Carlo mode (sites unmasked: pmf of the hard sample): the value is unbiased at any temperature..."""
    prior = BernoulliPrior(PI)
    guide = FixedLogitsGate(LOGITS, prior=prior, temperature=1.0)
    guide.analytic_kl = False
    model = ContrastiveModel(NTXent(0.2), prior, analytic_kl=False)
    mean, grad = gate_term_draws(model.model, guide.guide, whole_dataset_batch(8), guide.a, draws=2000)
    kl, kl_grad = analytic_kl_and_grad(LOGITS, PI)
    assert abs(mean / 4 - kl) / kl < 0.02
    # ...but the straight-through path gradient of a sampled log p − log q is biased: why the default is analytic.
    assert F.cosine_similarity(grad / 4, kl_grad, dim=0) < 0.985


def test_plain_straight_through_guide_with_bernoulli_prior_is_not_an_elbo():
    """Pyro's RelaxedBernoulliStraightThrough scores the soft value with a Concrete density: the 'KL' is wrong."""
    a = LOGITS.clone()

    def model():
        pyro.sample("gate", dist.Bernoulli(probs=torch.full_like(a, PI)).to_event(1))

    def guide():
        pyro.sample("gate", dist.RelaxedBernoulliStraightThrough(torch.tensor(0.5, dtype=a.dtype), logits=a).to_event(1))

    elbo = TraceGraph_ELBO()
    mean = sum(elbo.loss(model, guide) for _ in range(2000)) / 2000
    kl, _ = analytic_kl_and_grad(a, PI)
    assert mean / kl > 1.5


def test_minibatch_objective_estimates_the_dataset_objective():
    """Unscaled loss = 2N · (mean NT-Xent + β · mean KL per view), with all gates forced open (logits ≫ 0)."""
    torch.manual_seed(0)
    prior, beta, n_images = BernoulliPrior(PI), 0.01, 1000
    guide = FixedLogitsGate(torch.full((6,), 30.0, dtype=torch.float64), prior=prior, kl_weight=beta)
    model = ContrastiveModel(NTXent(0.2), prior, kl_weight=beta)
    z = torch.rand(8, 6, dtype=torch.float64)
    batch = EncodedBatch(h=torch.zeros(8, 1, dtype=torch.float64), z=z, index=torch.arange(4), num_images=n_images)
    loss = TraceGraph_ELBO().loss(model.model, guide.guide, batch)
    kl, _ = analytic_kl_and_grad(guide.a.detach(), PI)
    expected = 2 * n_images * (nt_xent(z, 0.2).item() + beta * kl)
    assert loss == pytest.approx(expected, rel=1e-9)


def test_ungated_objective_is_the_ncl_loss():
    torch.manual_seed(0)
    config = Config(method="ncl", width=4, hidden_dim=16, feature_dim=8).resolved()
    system = build_system(config, in_channels=1)
    x1, x2 = torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)
    batch = system.encode(x1, x2, torch.arange(4), num_images=4)
    scale = 1.0 / batch.dataset_views
    loss = TraceGraph_ELBO().loss(poutine.scale(system.model.model, scale), poutine.scale(system.guide.guide, scale), batch)
    enc = system.encoder
    z = F.relu(enc.projector(enc.backbone(torch.cat([x1, x2]))))  # BatchNorm in train mode, same batch
    assert loss == pytest.approx(nt_xent(z, 0.2).item(), rel=1e-5)
