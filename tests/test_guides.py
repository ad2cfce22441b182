"""Guides and priors against independent computations: enumeration, the authors' formula, conjugate behaviour."""
import itertools
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import TraceGraph_ELBO

from guides import GUIDES, AmortizedGate, ExactBernoulliGate, ExactKGate
from models import ContrastiveModel
from models.bernoulli import BernoulliPrior
from models.beta_bernoulli import BetaBernoulliPrior
from pyro_ncl.batch import EncodedBatch
from pyro_ncl.config import Config
from pyro_ncl.presets import load_preset
from pyro_ncl.likelihoods import NTXent, nt_xent
from pyro_ncl.ops import safe_normalize
from pyro_ncl.system import build_system
from pyro_ncl.train import SVITrainer

PI, BETA, TAU = 0.4, 1.0, 0.5
A0 = torch.tensor([-1.0, 0.3, 1.5], dtype=torch.float64)


class FixedExactGate(ExactBernoulliGate):
    """The score-function guide with its gate head replaced by fixed logits a [3] shared by all views."""

    def __init__(self, a, **kw):
        super().__init__(1, 4, a.numel(), BernoulliPrior(PI), kl_weight=BETA, **kw)
        self.a = a.clone().requires_grad_(True)
        self.double()

    def logits(self, h):
        return self.a.expand(h.shape[0], -1)


def tiny_batch():
    """Two images (four views) forming the whole dataset: plate scale 1; gate of 3 dimensions per view."""
    torch.manual_seed(0)
    z = torch.rand(4, 3, dtype=torch.float64)
    return EncodedBatch(h=torch.zeros(4, 1, dtype=torch.float64), z=z, index=torch.arange(2), num_images=2)


def exact_gradient(batch):
    """∇_a E_q[loss] by enumerating all 2^12 masks of the four views."""
    a = A0.clone().requires_grad_(True)
    masks = torch.tensor(list(itertools.product([0.0, 1.0], repeat=12)), dtype=torch.float64).view(-1, 4, 3)
    z = safe_normalize(batch.z)
    contrastive = torch.stack([nt_xent(safe_normalize(z * m), TAU) for m in masks])
    log_q = (masks * F.logsigmoid(a) + (1 - masks) * F.logsigmoid(-a)).sum((1, 2))
    log_p = (masks * math.log(PI) + (1 - masks) * math.log(1 - PI)).sum((1, 2))
    expected_loss = (log_q.exp() * (4 * contrastive + BETA * (log_q - log_p))).sum()
    return torch.autograd.grad(expected_loss, a)[0]


def svi_gradients(baseline, draws, batch, burn_in=0):
    pyro.clear_param_store()
    torch.manual_seed(1)
    guide = FixedExactGate(A0, baseline=baseline)
    model = ContrastiveModel(NTXent(TAU), guide.prior, kl_weight=BETA, analytic_kl=False)
    assert not guide.analytic_kl  # score-function guide: Monte-Carlo gate sites
    opt = torch.optim.Adam(guide.baseline_net.parameters(), lr=0.02) if guide.baseline_net is not None else None
    elbo, grads = TraceGraph_ELBO(), []
    for i in range(burn_in + draws):
        guide.a.grad = None
        elbo.loss_and_grads(model.model, guide.guide, batch)
        if i >= burn_in:
            grads.append(guide.a.grad.clone())
        if opt is not None:  # fit the neural baseline only; a stays fixed
            opt.step()
            opt.zero_grad()
    return torch.stack(grads)


def test_exact_bernoulli_guide_gradient_matches_enumeration():
    batch = tiny_batch()
    truth = exact_gradient(batch)
    mean = svi_gradients("decaying", draws=1000, batch=batch, burn_in=100).mean(0)
    assert F.cosine_similarity(mean, truth, dim=0) > 0.98
    assert (mean - truth).norm() / truth.norm() < 0.15


def test_baselines_lower_the_score_function_variance():
    batch = tiny_batch()
    variance = {b: svi_gradients(b, draws=300, batch=batch, burn_in=150).var(0).sum().item()
                for b in ("none", "decaying", "neural")}
    assert variance["decaying"] < 0.5 * variance["none"]
    assert variance["neural"] < 0.5 * variance["none"]


def test_deterministic_guide_reproduces_the_authors_loss():
    """Authors' preset: loss per view = NT-Xent(normalize(normalize(z) ⊙ 1[σ(a/T) > 0.5])) + λ mean_v Σ_d KL
    with q = σ(a/T) and π clamped to [0.01, 0.99]."""
    values = {k: v for k, v in load_preset("bayesncl_authors_cifar100").items() if k != "dataset"}
    config = Config(**{**values, "backbone": "small_resnet", "width": 4, "hidden_dim": 16, "feature_dim": 8}).resolved()
    assert config.guide == "deterministic" and config.prior_prob == 0.8 and config.kl_weight == 3e-5
    torch.manual_seed(0)
    system = build_system(config, in_channels=3, num_classes=100).double()
    x1, x2 = torch.randn(6, 3, 32, 32, dtype=torch.float64), torch.randn(6, 3, 32, 32, dtype=torch.float64)
    batch = system.encode(x1, x2, torch.arange(6), num_images=600)
    scale = 1.0 / batch.dataset_views
    loss = TraceGraph_ELBO().loss(poutine.scale(system.model.model, scale), poutine.scale(system.guide.guide, scale), batch)

    a = system.guide.head(batch.h)                       # the authors: gate head on the (detached) features
    mask = (torch.sigmoid(a / config.gate_temperature) > 0.5).double()
    z = F.normalize(F.normalize(batch.z, dim=-1) * mask, dim=-1)
    q = torch.sigmoid(a / config.gate_temperature).clamp(0.01, 0.99)
    pi = min(max(config.prior_prob, 0.01), 0.99)
    kl = (q * torch.log(q / pi) + (1 - q) * torch.log((1 - q) / (1 - pi))).sum(-1).mean()
    authors = nt_xent(z, config.temperature) + config.kl_weight * kl
    assert loss == pytest.approx(authors.item(), abs=1e-6)


def test_beta_bernoulli_rates_move_toward_observed_gate_frequencies():
    """Gates open with fixed frequencies p_d in many views: the posterior mean of ρ_d moves from π toward p_d."""
    torch.manual_seed(0)
    freqs = torch.tensor([0.9, 0.5, 0.1])
    prior = BetaBernoulliPrior(prior_prob=0.5, concentration=2.0, num_dims=3)

    class FixedGate(AmortizedGate):
        def logits(self, h):
            return torch.logit(freqs).expand(h.shape[0], -1)

    guide = FixedGate(1, 4, 3, prior)
    assert guide.analytic_kl  # the gate's KL given ρ is closed-form; ρ itself is sampled (reparameterised Beta)
    model = ContrastiveModel(NTXent(TAU), prior, analytic_kl=True)
    blocked = poutine.block(model.model, hide=["contrastive"])
    batch = EncodedBatch(h=torch.zeros(64, 1), z=torch.rand(64, 3), index=torch.arange(32), num_images=5000)
    opt = torch.optim.Adam([prior.rate_alpha, prior.rate_beta], lr=0.05)
    elbo = TraceGraph_ELBO()
    for _ in range(250):
        elbo.loss_and_grads(lambda b: blocked(b), guide.guide, batch)
        opt.step()
        opt.zero_grad()
    rate = prior.posterior_rates().mean.detach()
    start = torch.full((3,), 0.5)
    moved = (rate - freqs).abs() < 0.5 * (start - freqs).abs()
    assert moved[[0, 2]].all() and abs(rate[1] - 0.5) < 0.05, rate


def test_global_gate_is_shared_by_all_views():
    config = Config(guide="global", width=4, hidden_dim=16, feature_dim=8).resolved()
    system = build_system(config, in_channels=1)
    trainer = SVITrainer(system, config, steps_per_epoch=1)
    trainer.step(torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28), None, torch.arange(4), num_images=100)
    trace = poutine.trace(system.guide.guide).get_trace(system.encode(torch.rand(4, 1, 28, 28),
                                                                      torch.rand(4, 1, 28, 28), torch.arange(4), 100))
    assert trace.nodes["gate"]["value"].shape == (8,)
    h = torch.randn(3, system.encoder.backbone_dim, generator=torch.Generator().manual_seed(0))  # distinct rows
    assert not system.guide.mode(h).std(0).any()  # the same gate for every sample


def gated_guides():
    for name in GUIDES.names():
        if GUIDES[name].value_kind is not None:
            yield name


@pytest.mark.parametrize("guide", list(gated_guides()))
def test_probs_and_samples_are_the_guides_own(guide):
    """At T = 0.5: ``probs(h)`` is the frequency with which the guide's own draws open a gate (mask > ½), σ(a) for
    the Bernoulli guides and relaxed_soft, the marginals of the exactly-k posterior (whose mode is its k largest
    logits, every draw opening k gates) and of the at-most-k one (the positive ones among them, at most k); the deterministic point estimate answers σ(a/T) and draws its one mask."""
    prior = "concrete" if GUIDES[guide].value_kind == "soft" else "bernoulli"
    config = Config(prior=prior, guide=guide, gate_temperature=0.5, width=4, hidden_dim=16, feature_dim=8).resolved()
    torch.manual_seed(0)
    system = build_system(config, in_channels=1)
    g = torch.Generator().manual_seed(1)
    h = 3 * torch.randn(5, system.encoder.backbone_dim, generator=g)
    z = torch.rand(5, 8, generator=g) * (torch.rand(5, 8, generator=g) < 0.5)  # value-aware guides read z too
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    a = system.guide.view_logits(h, z).detach()
    probs, masks = system.guide.probs(h, z).detach(), system.guide.sample_masks(h, 4000, z)
    assert probs.shape == (5, 8) and masks.shape == (4000, 5, 8)
    if issubclass(GUIDES[guide], ExactKGate):  # exact_k, exact_k_aux and atmost_k
        k, at_most = system.guide.k, guide == "atmost_k"
        top = torch.topk(a, k, dim=1)
        on = (top.values > 0).float() if at_most else 1.0  # at most k: the positive ones of the k largest
        assert torch.equal(system.guide.mode(h, z), torch.zeros_like(a).scatter_(1, top.indices, on))
        assert bool((masks.sum(-1) <= k).all()) if at_most else torch.equal(masks.sum(-1), torch.full((4000, 5), float(k)))
        freq = masks.double().mean(0)
        assert ((freq - probs).abs() <= 5 * (probs * (1 - probs) / 4000).sqrt() + 1e-3).all()
        return
    assert torch.equal(system.guide.mode(h, z), (probs > 0.5).float())
    if guide == "deterministic":
        assert torch.allclose(probs, torch.sigmoid(a / 0.5), atol=1e-6)
        assert torch.equal(masks, (a > 0).float().expand(4000, -1, -1))
        return
    assert torch.allclose(probs, torch.sigmoid(a), atol=1e-6)
    freq = (masks > 0.5).double().mean(0)
    assert ((freq - probs).abs() <= 5 * (probs * (1 - probs) / 4000).sqrt() + 1e-3).all()
    if GUIDES[guide].value_kind == "soft":  # relaxed masks σ(y), not the logits y the site holds
        assert masks.min() >= 0 and masks.max() <= 1 and ((masks > 0.01) & (masks < 0.99)).any()
    else:
        assert set(masks.unique().tolist()) <= {0.0, 1.0}
