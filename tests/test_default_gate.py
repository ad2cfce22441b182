"""The default ``--method bayesncl`` is the design card's Bayesian model: an amortized stochastic gate under the
sparse Bernoulli prior, trained by SVI, whose training depends on the prior and on β (issue 17: the earlier default,
a point mass, trained bit-identically for π 0.8 and 0.05)."""
import torch

from pyro_ncl.config import Config
from pyro_ncl.system import build_system
from pyro_ncl.train import SVITrainer


def trained(steps=3, **settings):
    """The encoder's and the guide's parameters after ``steps`` SVI steps on fixed images, from one seed."""
    config = Config(width=4, hidden_dim=16, feature_dim=16, batch_size=8, budget_anneal_epochs=0.0,
                    **settings).resolved()  # the budget from the first step (the curriculum would delay it)
    torch.manual_seed(0)
    system = build_system(config, in_channels=1)
    trainer = SVITrainer(system, config, steps_per_epoch=steps)
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.rand(8, 1, 28, 28, generator=g), torch.rand(8, 1, 28, 28, generator=g)
    kls = []
    torch.manual_seed(2)
    for _ in range(steps):
        trainer.step(x1, x2, None, torch.arange(8), num_images=64)
        kls.append(system.step_stats()["gate_kl"])
    return system, kls


def params(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_default_is_the_stochastic_exact_k_gate():
    system, kls = trained()
    assert type(system.guide).__name__ == "ExactKGate"
    h, z = torch.randn(5, system.encoder.backbone_dim), torch.rand(5, 16)
    system.eval()
    assert float(system.guide.entropy(h, z).detach().min()) > 0  # real posterior uncertainty
    assert len(set(kls)) == len(kls)  # the gate term moves with the posterior: no constant "gate_kl"


def test_default_training_depends_on_the_prior_and_on_beta():
    base, _ = trained(prior_prob=0.125)          # k = 2 of 16
    other_prior, _ = trained(prior_prob=0.25)    # k = 4 of 16
    other_beta, _ = trained(prior_prob=0.125, kl_weight=0.5)
    same, _ = trained(prior_prob=0.125)
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
