"""One SVI step for every valid (prior, guide, likelihood) combination; invalid ones are refused."""
import itertools

import pyro
import pyro.poutine as poutine
from pyro.poutine.util import prune_subsample_sites
import pytest
import torch

from guides import GUIDES
from models import PRIORS
from pyro_ncl.config import Config
from pyro_ncl.likelihoods import LIKELIHOODS
from pyro_ncl.system import build_system, check_parts
from pyro_ncl.train import SVITrainer


def combinations():
    for prior, guide, likelihood in itertools.product(PRIORS.names(), GUIDES.names(), LIKELIHOODS.names()):
        config = Config(prior=prior, guide=guide, likelihood=likelihood, width=4, hidden_dim=16,
                        feature_dim=8, batch_size=4, epochs=1).resolved()
        try:
            check_parts(config)
        except ValueError as err:
            yield pytest.param(config, str(err), id=f"{prior}-{guide}-{likelihood}-refused")
        else:
            yield pytest.param(config, None, id=f"{prior}-{guide}-{likelihood}")


def is_reparameterised(guide_trace) -> bool:
    """Whether every latent site of the guide's trace is sampled with a pathwise gradient (then the gradient of
    −ELBO is the plain autograd gradient of the replayed trace's −(log p − log q))."""
    sites = prune_subsample_sites(guide_trace).nodes.values()  # (a plate's subsample is no latent)
    return all(site["is_observed"] or site["fn"].has_rsample for site in sites if site["type"] == "sample")


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")  # the recording step
@pytest.mark.parametrize("config,refusal", list(combinations()))
def test_one_svi_step(config, refusal):
    """The second ``SVITrainer.step`` of each valid combination against a replayed trace and a hand-written SGD update.
    Its loss is −(log p(x, m) − log q(m)) / 2N of the system's own model and guide, recomputed from the guide's
    trace (same seed, same draws) and the model replayed on it; for a guide whose every latent site is
    reparameterised, its gradients are autograd's of that replayed loss; the parameters move by one SGD step of
    those gradients, p − lr_group · (momentum · b + g + weight_decay · p) (b the momentum buffer of the first step),
    at the gate's learning rate for the guide's parameters; the encoder's backbone and the gate head get a non-zero
    gradient. DisARM's loss (an antithetic average of two draws) is checked in tests/test_disarm.py; here only its
    update."""
    if refusal is not None:
        assert config.prior in refusal or config.guide in refusal or config.likelihood in refusal
        with pytest.raises(ValueError):
            build_system(config, in_channels=1, num_classes=4)
        return
    torch.manual_seed(0)
    system = build_system(config, in_channels=1, num_classes=4)
    trainer = SVITrainer(system, config, steps_per_epoch=2)
    gen = torch.Generator().manual_seed(1)
    x1, x2 = torch.rand(4, 1, 28, 28, generator=gen), torch.rand(4, 1, 28, 28, generator=gen)
    y, index = torch.tensor([0, 1, 2, 3]), torch.arange(4)
    # the second step is checked: the first sets Pyro's ELBO up, and exact_k's budget starts at k = K (every gate
    # open: no gradient reaches its head) and has fallen by then
    trainer.step(x1, x2, y, index, num_images=16)
    params = dict(system.named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    seen = {}
    optimizer_step = trainer.optimizer.step

    def recording_step(*args, **kwargs):  # the gradients and learning rates the optimiser is given
        seen["grads"] = {name: p.grad.clone() for name, p in params.items() if p.grad is not None}
        seen["lr"] = {id(p): group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
        seen["momentum"] = {id(p): trainer.optimizer.state[p]["momentum_buffer"].clone()
                            for p in params.values() if "momentum_buffer" in trainer.optimizer.state.get(p, {})}
        return optimizer_step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    pyro.set_rng_seed(1)
    loss = trainer.step(x1, x2, y, index, num_images=16)
    after = {name: p.detach().clone() for name, p in params.items()}

    # the update: one SGD step of the gradients, group by group (the same warm-up factor for every group)
    in_guide = {id(p) for p in system.guide.parameters()}
    warmup = seen["lr"][id(next(system.encoder.parameters()))] / config.lr
    assert 0 < warmup <= 1
    for name, p in params.items():
        grad = seen["grads"].get(name)
        if grad is None:
            assert torch.equal(after[name], before[name]), name
            continue
        lr = seen["lr"][id(p)]
        base = config.gate_lr if id(p) in in_guide else config.lr
        assert lr == pytest.approx(base * warmup, rel=1e-12), name
        step = grad + config.weight_decay * before[name]
        if id(p) in seen["momentum"]:
            step = step + config.momentum * seen["momentum"][id(p)]
        expected = before[name] - lr * step
        torch.testing.assert_close(after[name], expected, rtol=1e-6, atol=1e-8)
    assert any(name.startswith("encoder.backbone") and float(g.abs().max()) > 0 for name, g in seen["grads"].items())
    if system.gated and getattr(system.guide, "head", None) is not None:
        assert any(name.startswith("guide.head") and float(g.abs().max()) > 0 for name, g in seen["grads"].items())
    if config.guide == "disarm":
        return

    # the loss and the gradients: the replayed trace of the same draws, from the parameters before the step
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(before[name])
    pyro.set_rng_seed(1)
    batch = system.encode(x1, x2, index, 16, y)
    scale = 1.0 / (2 * 16)
    guide_trace = poutine.trace(poutine.scale(system.guide.guide, scale)).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(poutine.scale(system.model.model, scale), trace=guide_trace)
                                ).get_trace(batch)
    replayed = -(model_trace.log_prob_sum() - guide_trace.log_prob_sum())
    assert loss == pytest.approx(float(replayed.detach()), rel=1e-5, abs=1e-6)
    if is_reparameterised(guide_trace):
        names = sorted(seen["grads"])
        grads = torch.autograd.grad(replayed, [params[n] for n in names], allow_unused=True)
        for name, grad in zip(names, grads):
            torch.testing.assert_close(seen["grads"][name], torch.zeros_like(params[name]) if grad is None else grad,
                                       rtol=1e-4, atol=1e-6, msg=name)


def test_gate_needs_both_prior_and_guide():
    with pytest.raises(ValueError, match="--prior bernoulli scores hard .* --guide none produces no gate"):
        check_parts(Config(method="ncl", prior="bernoulli").resolved())


def test_pmf_prior_with_relaxed_guide_is_refused():
    with pytest.raises(ValueError, match="--prior bernoulli scores hard .* relaxed_soft produces relaxed"):
        check_parts(Config(prior="bernoulli", guide="relaxed_soft").resolved())
