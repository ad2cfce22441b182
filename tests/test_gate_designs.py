"""The gate designs of issue 11 against independent computations: exact enumeration of a tiny gate, the analytic
KL, hand-computed penalties and logits."""
import itertools
import math

import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import TraceGraph_ELBO

from guides import ImageGate, ValueAwareGate
from models import ContrastiveModel
from models.bernoulli import BernoulliPrior
from models.rate import AggregateRatePenalty
from pyro_ncl.batch import EncodedBatch
from pyro_ncl.config import Config
from pyro_ncl.likelihoods import NTXent, nt_xent
from pyro_ncl.ops import safe_normalize
from pyro_ncl.scopes import IMAGE
from pyro_ncl.system import build_system
from pyro_ncl.train import SVITrainer

PI, TAU = 0.3, 0.5


def kl_bernoulli(p, pi):
    """KL(Bern(p) ‖ Bern(π)), elementwise, written out."""
    return p * torch.log(p / pi) + (1 - p) * torch.log((1 - p) / (1 - pi))


def kl_from_logits(a, pi):
    """KL(Bern(σ(a)) ‖ Bern(π)) in the logits (no saturation of σ)."""
    p = torch.sigmoid(a)
    return p * (F.logsigmoid(a) - math.log(pi)) + (1 - p) * (F.logsigmoid(-a) - math.log(1 - pi))


class FixedImageGate(ImageGate):
    """The image-scoped guide with each view's logits fixed (rows of ``view_a`` [2B, K])."""

    def __init__(self, view_a, **kw):
        super().__init__(1, 1, view_a.shape[1], **kw)
        self.view_a = view_a

    def logits(self, h):
        return self.view_a


def two_image_batch(num_dims=2):
    """Both images (four views) of a two-image dataset: every plate has scale 1."""
    z = torch.rand(4, num_dims, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    return EncodedBatch(h=torch.zeros(4, 1, dtype=torch.float64), z=z, index=torch.arange(2), num_images=2)


def test_image_gate_objective_equals_enumeration_of_shared_masks():
    """Loss (whole dataset, unscaled) = 4 · E_q[NT-Xent with both views of image i gated by m_i] + β Σ_i KL(q_i ‖ π),
    q_i = σ(½(a_i¹ + a_i²)): all 2^(2·K) masks of the two images enumerated."""
    torch.manual_seed(0)
    beta, batch = 0.7, two_image_batch()
    view_a = torch.tensor([[1.0, -0.5], [0.2, 2.0], [-0.6, 0.1], [0.4, 1.0]], dtype=torch.float64)
    prior = BernoulliPrior(PI)
    guide = FixedImageGate(view_a, prior=prior, kl_weight=beta)
    model = ContrastiveModel(NTXent(TAU), prior, kl_weight=beta, scope=IMAGE)
    image_a = 0.5 * (view_a[:2] + view_a[2:])                       # [2 images, K]
    q = torch.sigmoid(image_a)
    z = safe_normalize(batch.z)
    expected = beta * kl_bernoulli(q, PI).sum().item()
    for bits in itertools.product([0.0, 1.0], repeat=4):
        m = torch.tensor(bits, dtype=torch.float64).view(2, 2)     # one mask per image
        prob = (q ** m * (1 - q) ** (1 - m)).prod().item()
        expected += prob * 4 * nt_xent(safe_normalize(z * torch.cat([m, m])), TAU).item()
    elbo = TraceGraph_ELBO()
    draws = [elbo.loss(model.model, guide.guide, batch) for _ in range(1000)]
    mean, sem = sum(draws) / len(draws), torch.tensor(draws).std().item() / math.sqrt(len(draws))
    assert abs(mean - expected) < 4 * sem + 1e-9, (mean, expected, sem)
    # one gate per image: the site has one row per image and both views of an image get the same mask
    trace = poutine.trace(guide.guide).get_trace(batch)
    assert trace.nodes["gate"]["value"].shape == (2, 2)
    model_trace = poutine.trace(poutine.replay(model.model, trace=trace)).get_trace(batch)
    assert model_trace.nodes["gate"]["value"].shape == (2, 2)


def test_image_gate_minibatch_scale():
    """A batch of B of N images: the gate term is scaled by N/B (one KL per image), the factor by 2N."""
    torch.manual_seed(0)
    prior, beta, n = BernoulliPrior(PI), 0.01, 1000
    guide = FixedImageGate(torch.full((8, 3), 30.0, dtype=torch.float64), prior=prior, kl_weight=beta)
    model = ContrastiveModel(NTXent(0.2), prior, kl_weight=beta, scope=IMAGE)
    z = torch.rand(8, 3, dtype=torch.float64)
    batch = EncodedBatch(h=torch.zeros(8, 1, dtype=torch.float64), z=z, index=torch.arange(4), num_images=n)
    loss = TraceGraph_ELBO().loss(model.model, guide.guide, batch)
    kl = kl_bernoulli(torch.sigmoid(torch.tensor(30.0, dtype=torch.float64)), PI).item() * 3
    assert loss == pytest.approx(2 * n * nt_xent(z, 0.2).item() + n * beta * kl, rel=1e-9)


def test_image_gate_trains_and_is_shared_by_both_views():
    """``--guide image`` in a built system: a step moves the gate head, and on the next batch the guide's trace, the
    model replayed on it and the features the likelihood is given show one mask per image applied to both of its
    views: views i and i + B are normalize(normalize(z_v) ⊙ m_i), m_i the site's row i."""
    config = Config(guide="image", width=4, hidden_dim=16, feature_dim=8).resolved()
    torch.manual_seed(0)
    system = build_system(config, in_channels=1)
    trainer = SVITrainer(system, config, steps_per_epoch=1)
    head = [p.detach().clone() for p in system.guide.head.parameters()]
    loss = trainer.step(torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28), None, torch.arange(4), num_images=100)
    assert math.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(head, system.guide.head.parameters()))
    for _ in range(20):  # until the images draw different masks (one draw alone could repeat a mask)
        batch = system.encode(torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28), torch.arange(4), 100)
        trace = poutine.trace(system.guide.guide).get_trace(batch)
        m = trace.nodes["gate"]["value"].detach()
        if len(set(map(tuple, m.tolist()))) > 1:
            break
    assert m.shape == (4, 8) and len(set(map(tuple, m.tolist()))) > 1  # one row per image
    seen = []
    with system.model.likelihood.register_forward_hook(lambda module, args, out: seen.append(args[0].detach())):
        model_trace = poutine.trace(poutine.replay(system.model.model, trace=trace)).get_trace(batch)
    assert torch.equal(model_trace.nodes["gate"]["value"], trace.nodes["gate"]["value"])
    z = F.normalize(batch.z.detach(), dim=-1)
    expected = F.normalize(z * torch.cat([m, m]), dim=-1)
    assert torch.allclose(seen[-1], expected, atol=1e-6)
    assert not torch.allclose(seen[-1], F.normalize(z * torch.cat([m, m.roll(1, 0)]), dim=-1), atol=1e-3)


def test_value_gate_logits_are_a_stochastic_jumprelu():
    torch.manual_seed(0)
    guide = ValueAwareGate(5, 8, 4, BernoulliPrior(PI))
    with torch.no_grad():
        guide.threshold.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
        guide.raw_scale.copy_(torch.log(torch.expm1(torch.tensor([0.05, 0.1, 0.2, 0.5]))))
    h, z = torch.randn(6, 5), torch.rand(6, 4)
    head = guide.head(h)
    expected = head + (z - torch.tensor([0.1, 0.2, 0.3, 0.4])) / torch.tensor([0.05, 0.1, 0.2, 0.5])
    assert torch.allclose(guide.view_logits(h, z), expected, atol=1e-5)
    assert torch.equal(guide.mode(h, z), (expected > 0).float())
    assert torch.allclose(guide.probs(h, z), torch.sigmoid(expected), atol=1e-6)
    with pytest.raises(ValueError, match="reads z"):
        guide.view_logits(h)


def test_value_gate_term_is_the_exact_kl_of_its_own_logits():
    """The value-aware gate keeps the default estimator: the gate term is β Σ KL(σ(a) ‖ π) with a = its logits."""
    torch.manual_seed(0)
    prior, beta = BernoulliPrior(PI), 0.5
    guide = ValueAwareGate(3, 8, 4, prior, kl_weight=beta).double()
    model = ContrastiveModel(NTXent(TAU), prior, kl_weight=beta)
    batch = EncodedBatch(h=torch.randn(4, 3, dtype=torch.float64), z=torch.rand(4, 4, dtype=torch.float64),
                         index=torch.arange(2), num_images=2)
    blocked = poutine.block(model.model, hide=["contrastive"])
    loss = TraceGraph_ELBO().loss(blocked, guide.guide, batch)
    a = guide.view_logits(batch.h, safe_normalize(batch.z))
    assert loss == pytest.approx(beta * kl_from_logits(a, PI).sum().item(), rel=1e-6)  # π held in float32


def test_value_gate_reads_z_detached_unless_asked():
    h, z = torch.randn(3, 5), torch.rand(3, 4, requires_grad=True)
    for detach, reaches in ((True, False), (False, True)):
        guide = ValueAwareGate(5, 8, 4, BernoulliPrior(PI), detach_features=detach)
        out = guide.view_logits(h, z).sum()
        assert out.requires_grad and (torch.autograd.grad(out, z, allow_unused=True)[0] is not None) == reaches


def test_rate_penalty_is_the_kl_of_the_batch_open_rate():
    """Per view: β Σ_d KL(Bern(q̄_d) ‖ Bern(π)) with q̄ the batch mean of σ(a) — not the mean of per-gate KLs."""
    torch.manual_seed(0)
    prior, beta = AggregateRatePenalty(PI), 0.25
    a = torch.tensor([[3.0, -2.0, 0.5], [2.0, -1.0, -0.5], [4.0, -3.0, 1.5], [1.0, 0.0, -2.5]], dtype=torch.float64,
                     requires_grad=True)

    class Fixed(ValueAwareGate.__mro__[1]):  # AmortizedGate with fixed logits
        def logits(self, h):
            return a

    guide = Fixed(1, 1, 3, prior, kl_weight=beta)
    model = ContrastiveModel(NTXent(TAU), prior, kl_weight=beta)
    batch = EncodedBatch(h=torch.zeros(4, 1, dtype=torch.float64), z=torch.rand(4, 3, dtype=torch.float64),
                         index=torch.arange(2), num_images=2)
    blocked = poutine.block(model.model, hide=["contrastive"])
    loss = TraceGraph_ELBO().loss_and_grads(blocked, guide.guide, batch)
    q_bar = torch.sigmoid(a).mean(0)
    penalty = 4 * beta * kl_bernoulli(q_bar, PI).sum()                # 4 views, each the same per-view penalty
    assert loss == pytest.approx(penalty.item(), rel=1e-6)  # π held in float32
    per_gate = 4 * beta * kl_bernoulli(torch.sigmoid(a), PI).sum(1).mean()
    assert abs(per_gate.item() - penalty.item()) > 0.1                   # not the Bernoulli prior's term
    grad = torch.autograd.grad(penalty, a)[0]
    assert torch.allclose(a.grad, grad, rtol=1e-5)
    # dimension 0 opens for almost every view (q̄ ≫ π): the penalty pushes its gates down, everywhere
    assert (a.grad[:, 0] > 0).all()


def test_rate_penalty_is_zero_at_the_prior_rate_whatever_the_choice_per_view():
    prior = AggregateRatePenalty(0.25)
    decisive = torch.tensor([[20.0], [-20.0], [-20.0], [-20.0]])    # one view of four opens: q̄ = 0.25
    coin = torch.full((4, 1), math.log(0.25 / 0.75))                 # every view a coin flip of bias 0.25
    assert prior.gate_kl(decisive, torch.tensor([0.25])).abs().max() < 1e-6
    assert prior.gate_kl(coin, torch.tensor([0.25])).abs().max() < 1e-6
    # the Bernoulli prior charges the decisive views (the mutual information), not the coin flips
    assert BernoulliPrior(0.25).gate_kl(decisive, torch.tensor([0.25])).mean() > 0.5
    assert BernoulliPrior(0.25).gate_kl(coin, torch.tensor([0.25])).abs().max() < 1e-6


def test_kl_warmup_scales_the_gate_term_linearly():
    config = Config(width=4, hidden_dim=16, feature_dim=8, kl_weight=0.2, kl_warmup_epochs=2).resolved()
    torch.manual_seed(0)
    system = build_system(config, in_channels=1)
    trainer = SVITrainer(system, config, steps_per_epoch=2)       # 4 warm-up steps
    factors = []
    for _ in range(6):
        factors.append(trainer.kl_factor())
        trainer.step(torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28), None, torch.arange(4), num_images=100)
        assert system.guide.kl_weight == pytest.approx(0.2 * factors[-1])
        assert system.model.kl_weight == pytest.approx(0.2 * factors[-1])
    assert factors == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    batch = system.encode(torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28), torch.arange(4), 100)
    trace = poutine.trace(system.guide.guide).get_trace(batch)
    assert trace.nodes["gate_kl"]["scale"] == pytest.approx(0.2 * 100 * 2 / 8)  # β · plate scale 2N / 2B


@pytest.mark.parametrize("test_gate", ["mode", "mean"])
def test_test_gate_chooses_the_evaluated_features(test_gate):
    config = Config(guide="value", width=4, hidden_dim=16, feature_dim=8, test_gate=test_gate).resolved()
    torch.manual_seed(0)
    system = build_system(config, in_channels=1).eval()
    out = system.features(torch.rand(5, 1, 28, 28))
    probs = system.guide.probs(out["h"], out["z"])
    assert torch.allclose(out["probs"], probs) and torch.equal(out["gate"], (probs > 0.5).float())
    weight = out["gate"] if test_gate == "mode" else probs
    assert torch.allclose(out["features"], F.normalize(out["z"] * weight, dim=1), atol=1e-6)


def test_unknown_test_gate_is_refused():
    with pytest.raises(ValueError, match="--test-gate must be one of mode, mean"):
        build_system(Config(test_gate="median", width=4, hidden_dim=16, feature_dim=8).resolved(), in_channels=1)


def test_topk_activation_keeps_each_views_largest_entries_with_a_curriculum():
    """``--method ncl_topk``: ReLU, then each row's k largest entries; k falls from K over the anneal epochs in
    training (linearly by default, geometrically with --budget-schedule geometric), is the final k in evaluation
    mode; the objective is plain NT-Xent on those features (no gate)."""
    geometric = Config(method="ncl_topk", topk=2, budget_anneal_epochs=1, budget_schedule="geometric", width=4,
                       hidden_dim=16, feature_dim=8).resolved()
    budget = build_system(geometric, in_channels=1).encoder._activation.budget
    assert [budget.at(t) for t in (0.0, 0.25, 0.5, 1.0)] == [8, 6, 4, 2]  # ⌈8 · (2/8)^t⌉
    config = Config(method="ncl_topk", topk=2, budget_anneal_epochs=1, width=4, hidden_dim=16,
                    feature_dim=8).resolved()
    torch.manual_seed(0)
    system = build_system(config, in_channels=1)
    assert not system.gated
    activation = system.encoder._activation
    ks = []
    for epochs_done in (0.0, 0.25, 0.5, 1.0, 3.0):
        system.set_progress(epochs_done)
        ks.append(activation.budget.current_k)
    assert ks == [8, 7, 5, 2, 2]  # ⌈8 − 6·t⌉ (the start min(K, max(128, 3k)) is K here), then the final k
    system.set_progress(0.5)
    x = torch.randn(5, 8)
    for training, k in ((True, 5), (False, 2)):
        activation.train(training)
        out = activation(x)
        for row, kept in zip(torch.relu(x), out):
            top = set(torch.argsort(row, descending=True)[:k].tolist())
            assert set(kept.nonzero().flatten().tolist()) == {d for d in top if row[d] > 0}
            assert torch.equal(kept[list(top)], row[list(top)])
    system.train()
    system.set_progress(5.0)
    batch = system.encode(torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28), torch.arange(4), 4)
    assert int((batch.z > 0).sum(1).max()) <= 2
    scale = 1.0 / batch.dataset_views
    loss = TraceGraph_ELBO().loss(poutine.scale(system.model.model, scale), poutine.scale(system.guide.guide, scale),
                                  batch)
    assert loss == pytest.approx(nt_xent(safe_normalize(batch.z), config.temperature).item(), rel=1e-5)


def test_topk_one_entry_is_refused_and_the_default_k_keeps_a_gradient():
    from pyro_ncl.budget import default_topk
    # one kept entry: normalize(z ⊙ m) is one-hot, a constant, so NT-Xent gives the encoder no gradient
    z = torch.rand(4, 8, requires_grad=True)
    one_hot = safe_normalize(z * torch.zeros_like(z).scatter_(1, z.argmax(1, keepdim=True), 1.0))
    nt_xent(one_hot, 0.5).backward()
    assert float(z.grad.abs().max()) == 0.0
    with pytest.raises(ValueError, match="--topk must be at least 2"):
        Config(method="ncl_topk", topk=1, width=4, hidden_dim=16, feature_dim=8).resolved().validate()
    with pytest.raises(ValueError, match="--topk must lie in \\[2, --feature-dim 8\\]"):
        build_system(Config(method="ncl_topk", topk=9, width=4, hidden_dim=16, feature_dim=8).resolved(),
                     in_channels=1)
    with pytest.raises(ValueError, match="--topk sets the top-k activation"):
        Config(topk=4).resolved().validate()  # the default bayesncl takes its budget from π
    assert [default_topk(K) for K in (2, 8, 64, 128, 256)] == [2, 2, 2, 4, 8]


def test_relative_gate_logits_and_every_view_keeps_its_strongest_entry():
    from guides import RelativeValueGate
    torch.manual_seed(0)
    guide = RelativeValueGate(5, 8, 4, BernoulliPrior(PI))
    with torch.no_grad():
        guide.raw_threshold.copy_(torch.logit(torch.tensor([0.2, 0.5, 0.9, 0.99])))
        guide.raw_scale.copy_(torch.log(torch.expm1(torch.tensor([0.05, 0.1, 0.2, 0.5]))))
    z = torch.rand(6, 4)
    r = z / z.max(1, keepdim=True).values
    expected = (r - torch.tensor([0.2, 0.5, 0.9, 0.99])) / torch.tensor([0.05, 0.1, 0.2, 0.5])
    assert torch.allclose(guide.view_logits(torch.zeros(6, 5), z), expected, atol=1e-5)
    mode = guide.mode(torch.zeros(6, 5), z)
    assert (mode.gather(1, z.argmax(1, keepdim=True)) == 1).all()  # θ < 1: the largest entry is always kept
    assert torch.equal(guide.mode(torch.zeros(2, 5), torch.zeros(2, 4)), torch.zeros(2, 4))  # empty rows: closed


def test_the_budget_anneal_schedules_and_where_they_start():
    """k_t from the start to k over the anneal: linear (default) start − (start − k)·f, geometric start·(k/start)^f,
    each rounded up, k afterwards and in evaluation; the default start min(K, max(128, 3k)) is every dimension up
    to K = 128 and keeps a step of the exactly-k gate at K = 2048 affordable (3k = 192, not K); a start outside
    [k, K] is refused in one line."""
    from pyro_ncl.budget import Budget, default_budget_start
    assert (default_budget_start(128, 4), default_budget_start(2048, 64), default_budget_start(8, 2),
            default_budget_start(256, 8)) == (128, 192, 8, 128)
    assert [Budget(2048, 64, 10.0).at(f) for f in (0.0, 0.5, 1.0, 2.0)] == [192, 128, 64, 64]
    geometric = Budget(2048, 64, 10.0, "geometric")
    assert [geometric.at(f) for f in (0.0, 0.5, 1.0, 2.0)] == [192, math.ceil(192 * (1 / 3) ** 0.5), 64, 64]
    linear = Budget(128, 4, 10.0, "linear", 128)
    assert [linear.at(f) for f in (0.0, 0.25, 1.0)] == [128, 97, 4]
    linear.set_progress(2.5)
    assert (linear.now(True), linear.now(False)) == (97, 4)
    with pytest.raises(ValueError, match=r"--budget-start must lie in \[4, --feature-dim 128\].*got 200"):
        Budget(128, 4, 1.0, start=200)
    with pytest.raises(ValueError, match="unknown budget schedule 'cosine'; expected one of: geometric, linear"):
        Budget(128, 4, 1.0, "cosine")
