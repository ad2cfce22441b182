"""One SVI step for every valid (prior, guide, likelihood) combination; invalid ones are refused."""
import itertools

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


@pytest.mark.parametrize("config,refusal", list(combinations()))
def test_one_svi_step(config, refusal):
    if refusal is not None:
        assert config.prior in refusal or config.guide in refusal or config.likelihood in refusal
        with pytest.raises(ValueError):
            build_system(config, in_channels=1, num_classes=4)
        return
    torch.manual_seed(0)
    system = build_system(config, in_channels=1, num_classes=4)
    before = {k: v.clone() for k, v in system.state_dict().items()}
    trainer = SVITrainer(system, config, steps_per_epoch=2)
    x1, x2 = torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28)
    for _ in range(2):  # the first step has learning rate warm-up factor 1/1; two steps to be safe
        loss = trainer.step(x1, x2, torch.tensor([0, 1, 2, 3]), torch.arange(4), num_images=16)
    assert torch.isfinite(torch.tensor(loss))
    changed = {k for k, v in system.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("encoder.backbone") for k in changed)
    if system.gated and getattr(system.guide, "head", None) is not None:
        assert any(k.startswith("guide.head") for k in changed)


def test_gate_needs_both_prior_and_guide():
    with pytest.raises(ValueError, match="--prior bernoulli scores hard .* --guide none produces no gate"):
        check_parts(Config(method="ncl", prior="bernoulli").resolved())


def test_pmf_prior_with_relaxed_guide_is_refused():
    with pytest.raises(ValueError, match="--prior bernoulli scores hard .* relaxed_soft produces relaxed"):
        check_parts(Config(prior="bernoulli", guide="relaxed_soft").resolved())
