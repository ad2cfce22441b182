"""Every shipped preset loads, names only known settings and resolves to a valid combination of parts."""
from pathlib import Path

import pytest
import yaml

from pyro_ncl import presets
from pyro_ncl.config import Config
from pyro_ncl.cli import build_parser, config_from_args
from pyro_ncl.presets import describe_recipe, load_preset, preset_names, recipe_config
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


# ---------------------------------------------------------------- recipes: --dataset X runs X's recipe
def parse(*argv):
    return config_from_args(build_parser().parse_args(list(argv)))


def test_dataset_alone_runs_its_recipe_with_the_default_method():
    """``--dataset imagenet100`` alone: ResNet-18 with the ImageNet stem, projector 16384/2048, 224 px, batch 128,
    100 epochs, lr 0.3 (the papers' ImageNet-100 training), the default method; recorded as the run's recipe."""
    config = parse("--dataset", "imagenet100")
    assert (config.recipe, config.backbone, config.cifar_stem, config.hidden_dim, config.feature_dim,
            config.image_size, config.batch_size, config.epochs, config.lr) == (
        "imagenet100", "resnet18", False, 16384, 2048, 224, 128, 100, 0.3)
    resolved = config.resolved()
    assert (resolved.method, resolved.guide) == ("bayesncl", "exact_k")
    check_parts(resolved)
    for name in ("cifar10", "cifar100", "stl10"):
        config = parse("--dataset", name)
        assert (config.recipe, config.backbone, config.feature_dim, config.epochs) == (name, "resnet18", 256, 200)
        check_parts(config.resolved())
    for name in ("fashion-mnist", "mnist", "scenes", "folder"):  # today's defaults are theirs
        config = parse("--dataset", name)
        assert config.recipe is None and (config.backbone, config.feature_dim, config.epochs) == (
            Config.backbone, Config.feature_dim, Config.epochs)


def test_flags_and_presets_win_over_the_recipe_and_the_run_says_which(tmp_path):
    config = parse("--dataset", "imagenet100", "--epochs", "2", "--feature-dim", "256")
    assert (config.epochs, config.feature_dim, config.hidden_dim) == (2, 256, 16384)
    line = describe_recipe(config)
    assert line.startswith("recipe imagenet100 (experiments/recipes/imagenet100.yaml")
    assert "epochs 100 → 2" in line and "feature_dim 2048 → 256" in line and "hidden_dim 16384," in line
    preset = tmp_path / "mine.yaml"
    preset.write_text("lr: 0.1\nbatch_size: 64\n")
    config = parse("--dataset", "imagenet100", "--preset", str(preset), "--batch-size", "32")
    assert (config.lr, config.batch_size, config.epochs) == (0.1, 32, 100)
    assert parse("--dataset", "imagenet100", "--recipe", "none").backbone == Config.backbone
    assert parse("--dataset", "folder", "--recipe", "imagenet100").feature_dim == 2048
    assert recipe_config(dataset="imagenet100", epochs=1) == parse("--dataset", "imagenet100", "--epochs", "1")


@pytest.mark.parametrize("text,message", [
    ("bogus: 1\n", "recipe broken .*has unknown settings: bogus"),
    ("lr: -1\n", "recipe broken .*: lr must be > 0, got -1"),
    ("method: ncl\n", "recipe broken .* sets method: a recipe holds a dataset's training settings"),
    ("out: runs/x\n", "recipe broken .* sets out"),
    ("[1, 2]\n", "recipe broken .* must be a mapping"),
])
def test_a_bad_recipe_is_refused_in_one_line_before_any_work(monkeypatch, tmp_path, text, message):
    (tmp_path / "broken.yaml").write_text(text)
    monkeypatch.setattr(presets, "_files", lambda package: {"broken": tmp_path / "broken.yaml"})
    with pytest.raises(ValueError, match=message) as err:
        parse("--dataset", "folder", "--recipe", "broken")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="--recipe: unknown recipe 'nope'; expected one of: auto, none, broken"):
        parse("--recipe", "nope")
