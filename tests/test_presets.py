"""Every shipped preset loads, names only known settings and resolves to a valid combination of parts."""
from pathlib import Path

import pytest

from pyro_ncl.config import PRESET_DIR, Config, load_preset
from pyro_ncl.system import check_parts

PRESETS = sorted(p.stem for p in Path(PRESET_DIR).glob("*.yaml"))


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
