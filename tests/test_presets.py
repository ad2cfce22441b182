"""Every shipped preset loads, names only known settings and resolves to a valid combination of parts."""
from pathlib import Path

import pytest
import yaml

from pyro_ncl.config import Config
from pyro_ncl.presets import load_preset, preset_names
from pyro_ncl.system import check_parts

PRESET_DIR = Path(__file__).resolve().parent.parent / "experiments" / "presets"
PRESETS = preset_names()


def test_presets_exist():
    assert {"bayesncl_authors_cifar100", "ncl_cifar100", "tricl_cifar10", "bcl_cifar10", "simlap_cifar10",
            "bayesncl_imagenet100"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_resolves_to_valid_parts(name):
    check_parts(Config(**load_preset(name)).resolved())


def test_imagenet100_preset_has_the_authors_scale():
    values = load_preset("bayesncl_imagenet100")
    assert (values["backbone"], values["hidden_dim"], values["feature_dim"], values["batch_size"],
            values["epochs"]) == ("resnet18", 16384, 2048, 128, 100)


@pytest.mark.parametrize("name", [p for p in PRESETS if load_preset(p).get("method") == "bayesncl"])
def test_gated_presets_name_the_gate_they_describe(name):
    """A preset of a gated method names its prior, guide, π and β, so that a change of the method's default gate
    cannot change what it runs; the authors' presets run the sampled straight-through gate they describe (or the
    authors' deterministic point estimate)."""
    values = load_preset(name)
    assert {"guide", "prior_prob", "kl_weight"} <= set(values), name
    assert values["guide"] in ("relaxed_st", "deterministic")
    assert (values["prior_prob"], values["kl_weight"]) == (0.8, 3e-5)
    description = yaml.safe_load((Path(PRESET_DIR) / f"{name}.yaml").read_text())["description"]
    assert values["guide"] in description, (name, description)  # the description says which gate runs
