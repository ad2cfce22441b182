"""The default ``--method bayesncl`` is the design card's Bayesian model: an amortized exactly-k gate under the
sparse Bernoulli prior, trained by SVI, whose training depends on the prior and on β; one posterior (one set of
tables) per training step and per evaluated batch; and what it logs separates the budget schedule's constant from
what the model learns."""
import math

import pytest
import torch
from torch.distributions.utils import lazy_property

import sequential_reference as sequential
from pyro_ncl.conditional_bernoulli import ConditionalBernoulli
from pyro_ncl.config import Config
from pyro_ncl.evaluation import eval_mode
from pyro_ncl.ops import safe_normalize
from pyro_ncl.system import build_system
from pyro_ncl.train import SVITrainer

K = 16


def setup(**settings):
    config = Config(width=4, hidden_dim=16, feature_dim=K, batch_size=8, budget_anneal_epochs=0.0,
                    **settings).resolved()  # the budget from the first step (the curriculum would delay it)
    torch.manual_seed(0)
    system = build_system(config, in_channels=1)
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.rand(8, 1, 28, 28, generator=g), torch.rand(8, 1, 28, 28, generator=g)
    return config, system, x1, x2


def trained(steps=3, **settings):
    """The system after ``steps`` SVI steps on fixed images, from one seed."""
    config, system, x1, x2 = setup(**settings)
    trainer = SVITrainer(system, config, steps_per_epoch=steps)
    torch.manual_seed(2)
    for _ in range(steps):
        trainer.step(x1, x2, None, torch.arange(8), num_images=64)
    return system


def params(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_the_default_is_the_exactly_k_gate_under_the_sparse_bernoulli_prior():
    config = Config().resolved()
    assert (config.method, config.prior, config.guide, config.prior_prob) == ("bayesncl", "bernoulli", "exact_k",
                                                                              1 / 32)
    system = build_system(config, in_channels=1)
    assert type(system.guide).__name__ == "ExactKGate" and system.guide.k == 4  # round(128 / 32)


@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
def test_a_step_logs_the_exact_kl_its_entropy_and_the_budget(progress):
    """At three points of the budget anneal: the logged gate_kl is the mean exact KL of the step's posteriors
    (recomputed independently: the sequential recursion in float64), gate_entropy their mean entropy, budget k_t;
    so gate_kl + gate_entropy = −k_t log π − (K − k_t) log(1 − π), the schedule's constant, and gate_entropy is
    what the model learns."""
    config, system, x1, x2 = setup(prior_prob=0.125)  # k = 2 of 16
    system.guide.budget.anneal_epochs = 1.0
    system.guide.budget.start = K
    trainer = SVITrainer(system, config, steps_per_epoch=10)
    system.set_progress(progress)
    k_t = system.guide.budget.now(True)
    trainer.loss_and_grads(x1, x2, None, torch.arange(8), num_images=64)
    stats = trainer.step_stats()
    with torch.no_grad():
        batch = system.encode(x1, x2, torch.arange(8), 64)  # train mode: the same batch statistics
        theta = system.guide.view_logits(batch.h, safe_normalize(batch.z)).double()
    mu = sequential.marginals(theta, k_t)
    entropy = sequential.log_normalizer(theta, k_t) - (theta * mu).sum(-1)
    constant = -k_t * math.log(0.125) - (K - k_t) * math.log(1 - 0.125)
    assert stats["budget"] == k_t
    assert stats["gate_entropy"] == pytest.approx(float(entropy.mean()), rel=1e-5, abs=1e-6)
    assert stats["gate_kl"] == pytest.approx(float((constant - entropy).mean()), rel=1e-5, abs=1e-5)


def test_one_posterior_per_training_step_and_per_evaluated_batch(monkeypatch):
    """The gate site, its KL and the logged statistics share one ConditionalBernoulli (one set of tables) per
    step; evaluation builds one per batch for the mode, the marginals and both entropies."""
    config, system, x1, x2 = setup()
    made, tables = [], []
    init, solved = ConditionalBernoulli.__init__, ConditionalBernoulli.__dict__["_solved"].wrapped

    def counted_init(self, *args, **kwargs):
        made.append(self)
        init(self, *args, **kwargs)

    def counted_tables(self):
        tables.append(self)
        return solved(self)
    counted_tables.__name__ = "_solved"  # where lazy_property caches the value
    monkeypatch.setattr(ConditionalBernoulli, "__init__", counted_init)
    monkeypatch.setattr(ConditionalBernoulli, "_solved", lazy_property(counted_tables))
    trainer = SVITrainer(system, config, steps_per_epoch=10)
    trainer.loss_and_grads(x1, x2, None, torch.arange(8), num_images=64)
    assert len(made) == 1 and len(tables) == 1
    made.clear(), tables.clear()
    with eval_mode(system):
        out = system.features(x1)
    assert len(made) == 1 and len(tables) == 1
    assert {"gate", "probs", "entropy", "doubt_entropy"} <= set(out)


def test_default_training_depends_on_the_prior_and_on_beta():
    base = trained(prior_prob=0.125)          # k = 2 of 16
    other_prior = trained(prior_prob=0.25)    # k = 4 of 16
    other_beta = trained(prior_prob=0.125, kl_weight=0.5)
    same = trained(prior_prob=0.125)
    assert torch.equal(params(base.encoder), params(same.encoder))  # the comparison is deterministic
    assert not torch.equal(params(base.encoder), params(other_prior.encoder))
    assert not torch.equal(params(base.encoder), params(other_beta.encoder))
    assert not torch.equal(params(base.guide), params(other_beta.guide))


def test_the_default_gate_trains_the_encoder_and_the_authors_switch_detaches_it():
    """By default (design ``exact_k_bb``, chosen on the validation split) the gate's own term reaches the encoder
    through z; ``--no-gate-grad-to-backbone`` (the authors' presets) leaves the encoder untouched by it."""
    grads = {}
    for reach in (True, False):
        config = Config(width=4, hidden_dim=16, feature_dim=16, gate_grad_to_backbone=reach).resolved()
        torch.manual_seed(0)
        system = build_system(config, in_channels=1)
        h, z = system.encoder(torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(3)))
        system.guide.entropy(h, z).sum().backward()
        grads[reach] = [p.grad for p in system.encoder.parameters()]
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in system.guide.parameters())
    assert Config().gate_grad_to_backbone
    assert sum(float(g.abs().sum()) for g in grads[True] if g is not None) > 0
    assert all(g is None or float(g.abs().sum()) == 0 for g in grads[False])
