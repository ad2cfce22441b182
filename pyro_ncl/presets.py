"""Settings files shipped with the package: **presets** (``--preset NAME``: a method's settings, e.g. an author's
published ones) and **recipes** (a dataset's training settings: backbone, projector, image size, batch, epochs,
learning rate, as the papers train on it), which ``--dataset NAME`` applies by itself.

Both are YAML mappings of ``Config`` field names (and a ``description``), kept in ``experiments/presets/`` and
``experiments/recipes/`` and installed as the packages ``pyro_ncl.preset_files`` and ``pyro_ncl.recipe_files``
(``pyproject.toml``), so a non-editable ``pip install .`` has them too. A run's settings, lowest first:

    the dataclass defaults < the dataset's recipe < the method's parts (--method) < --preset < explicit flags

``--recipe auto`` (the default) takes the dataset's own recipe when it has one (imagenet100, cifar10, cifar100,
stl10; fashion-mnist, mnist and scenes have none: the defaults are theirs); ``--recipe NAME`` another's (e.g.
imagenet100 for a folder of ImageNet-sized images), ``--recipe none`` no recipe. The recipe's name is stored in
config.json. From Python: ``recipe_config(dataset="imagenet100", epochs=1)`` is the ``Config`` the command line
``--dataset imagenet100 --epochs 1`` gives.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from pyro_ncl.config import FIELDS, FIELD_NAMES, Config, check_setting

PRESET_PACKAGE, RECIPE_PACKAGE = "pyro_ncl.preset_files", "pyro_ncl.recipe_files"
# what a recipe may not set: the data and the method are chosen on the command line, the recipe follows the data
NOT_IN_RECIPES = ("dataset", "recipe", "method", "prior", "guide", "likelihood", "non_neg")


def _files(package: str) -> Dict[str, Any]:
    """name → the shipped YAML file (a Traversable) of a package of settings files."""
    return {entry.name[:-len(".yaml")]: entry for entry in resources.files(package).iterdir()
            if entry.name.endswith(".yaml")}


def preset_names() -> List[str]:
    return sorted(_files(PRESET_PACKAGE))


def recipe_names() -> List[str]:
    return sorted(_files(RECIPE_PACKAGE))


class RecipeChoices:
    """What ``--recipe`` accepts (``Config``'s ``choices`` protocol: ``kind`` and ``names()``)."""
    kind = "recipe"

    @staticmethod
    def names() -> List[str]:
        return ["auto", "none", *recipe_names()]


RECIPES = RecipeChoices()


def read_settings(text: str, label: str, kind: str) -> Dict[str, Any]:
    """A YAML mapping of settings (``label``: where it comes from, for the messages; ``kind``: preset or recipe) →
    the checked values (``check_setting``); one-line ValueErrors for anything else."""
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{kind} {label} does not parse as YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{kind} {label} must be a mapping of setting: value, got {type(values).__name__}")
    unknown = sorted(set(values) - FIELD_NAMES - {"description"})
    if unknown:
        raise ValueError(f"{kind} {label} has unknown settings: {', '.join(unknown)}")
    values.pop("description", None)
    placed = sorted(k for k in values if not FIELDS[k].metadata.get("preset", True))
    if placed:
        raise ValueError(f"{kind} {label} sets {', '.join(placed)}: a {kind} holds settings of the method, not where "
                         f"results go or what runs them; pass " + ", ".join("--" + k.replace("_", "-") for k in placed)
                         + " on the command line")
    return {k: check_setting(k, v, f"{kind} {label}") for k, v in values.items()}


def load_preset(name_or_path: str) -> Dict[str, Any]:
    """A preset by name (a shipped ``experiments/presets/NAME.yaml``) or by path; keys are Config field names."""
    path = Path(name_or_path)
    if path.suffix:
        if not path.exists():
            raise ValueError(f"preset file {path} not found")
        return read_settings(path.read_text(), str(path), "preset")
    files = _files(PRESET_PACKAGE)
    if name_or_path not in files:
        raise ValueError(f"preset {name_or_path!r} not found; known presets: {', '.join(sorted(files)) or 'none'} "
                         f"(or give a path to a .yaml file)")
    return read_settings(files[name_or_path].read_text(), f"{name_or_path} (experiments/presets/{name_or_path}.yaml)",
                         "preset")


def load_recipe(name: str) -> Dict[str, Any]:
    """The recipe ``name`` (``experiments/recipes/NAME.yaml``); it may not set the dataset or the method."""
    files = _files(RECIPE_PACKAGE)
    if name not in files:
        raise ValueError(f"--recipe: unknown recipe {name!r}; expected one of: {', '.join(RECIPES.names())}")
    label = f"{name} (experiments/recipes/{name}.yaml)"
    values = read_settings(files[name].read_text(), label, "recipe")
    chosen = sorted(set(values) & set(NOT_IN_RECIPES))
    if chosen:
        raise ValueError(f"recipe {label} sets {', '.join(chosen)}: a recipe holds a dataset's training settings; "
                         f"the dataset and the method are chosen on the command line")
    return values


def recipe_of(values: Dict[str, Any]) -> Optional[str]:
    """The recipe that settings ``values`` (a partial mapping, as given) ask for: ``recipe`` when given (None for
    none), else the dataset's own when it has one."""
    name = values.get("recipe") or "auto"
    if name == "none":
        return None
    if name == "auto":
        dataset = values.get("dataset", FIELDS["dataset"].default)
        return dataset if dataset in _files(RECIPE_PACKAGE) else None
    return name


def with_recipe(values: Dict[str, Any]) -> Dict[str, Any]:
    """Settings as given (explicit flags over a preset) → the same with the recipe's values beneath them and
    ``recipe`` set to its name (or left as given when there is none)."""
    name = recipe_of(values)
    if name is None:
        return dict(values)
    return {**load_recipe(name), **values, "recipe": name}


def recipe_config(**settings: Any) -> Config:
    """The ``Config`` of these settings with the dataset's recipe beneath them (what the command line gives)."""
    unknown = sorted(set(settings) - FIELD_NAMES)
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)} (see pyro_ncl.config.Config)")
    return Config(**with_recipe(settings))


def describe_recipe(config: Config) -> Optional[str]:
    """One line: the recipe a run resolved and its values, each marked where the run's own setting differs (a flag
    or a preset won); None without a recipe."""
    if config.recipe in (None, "auto", "none"):
        return None
    shown = []
    for key, value in load_recipe(config.recipe).items():
        own = getattr(config, key)
        shown.append(f"{key} {_text(value)}" + (f" → {_text(own)}" if own != value else ""))
    return (f"recipe {config.recipe} (experiments/recipes/{config.recipe}.yaml; → marks a flag or preset that won): "
            + ", ".join(shown))


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
