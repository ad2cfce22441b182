"""Names that match: the file of a part is named as it is registered.

For every registry of parts (``GUIDES`` in ``guides/``, ``PRIORS`` in ``models/``, ``LIKELIHOODS`` in
``pyro_ncl/likelihoods/``, ``DATASETS`` in ``pyro_ncl/data/``, ``BACKBONES`` in ``pyro_ncl/backbones/``,
``NON_NEGATIVITY`` in ``pyro_ncl/non_negativity/``):
    * every registered name was registered by a module of that package whose file stem is the name, with "-" written
      "_" (``--guide bernoulli`` is ``guides/bernoulli.py``, ``--dataset fashion-mnist`` is
      ``pyro_ncl/data/fashion_mnist.py``);
    * every module of the package registers at least one name, or is one of the declared helpers below (shared code
      that registers nothing); a declared helper registers nothing and exists.

Not covered, on purpose: ``pyro_ncl.budget.SCHEDULES`` (two one-line curricula) and ``pyro_ncl.uncertainty.SCORES``
(score functions registered in a loop) are value tables, not parts with a module each.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
import runpy
from pathlib import Path
from typing import Dict, List

import pytest

from pyro_ncl.registry import Registry

# package → (registry, {helper module: what it holds})
PACKAGES = {
    "guides": ("guides:GUIDES", {"base": "GateGuide and the registry", "budgeted": "the budget mixin"}),
    "models": ("models:PRIORS", {"base": "GatePrior and the registry", "contrastive": "the Pyro model"}),
    "pyro_ncl.likelihoods": ("pyro_ncl.likelihoods:LIKELIHOODS", {}),
    "pyro_ncl.data": ("pyro_ncl.data:DATASETS", {
        "base": "the data interface and the registry", "augment": "batched views",
        "file_data": "FolderData, datasets read from image files", "idx": "the IDX reader (mnist, fashion-mnist)",
        "cifar": "the CIFAR reader and the small-image recipe (cifar10, cifar100)"}),
    "pyro_ncl.backbones": ("pyro_ncl.backbones:BACKBONES", {"torchvision_resnet": "torchvision's ResNets adapted"}),
    "pyro_ncl.non_negativity": ("pyro_ncl.non_negativity:NON_NEGATIVITY", {}),
}


def registry_of(spec: str) -> Registry:
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


def stem(name: str) -> str:
    """The file stem of a registered name: "-" → "_"."""
    return name.replace("-", "_")


def layout_problems(registry: Registry, package: str, helpers: Dict[str, str]) -> List[str]:
    """What breaks the rule in ``package`` for ``registry``, one line each (none: the layout holds)."""
    problems, registering = [], set()
    for name in registry.names():
        module = registry.module(name)
        parent, _, file_stem = module.rpartition(".")
        registering.add(file_stem)
        if parent != package:
            problems.append(f"{registry.kind} {name!r} is registered in {module}, outside {package}")
        elif file_stem != stem(name):
            problems.append(f"{registry.kind} {name!r} is registered in {module}; expected {package}.{stem(name)}")
    files = {info.name for info in pkgutil.iter_modules(importlib.import_module(package).__path__)}
    for file_stem in sorted(files - registering - set(helpers)):
        problems.append(f"{package}.{file_stem} registers no {registry.kind} and is not a declared helper")
    for helper in sorted(set(helpers) & registering):
        problems.append(f"{package}.{helper} is a declared helper but registers a {registry.kind}")
    for helper in sorted(set(helpers) - files):
        problems.append(f"declared helper {package}.{helper} does not exist")
    return problems


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_registered_name_is_its_files_name(package):
    spec, helpers = PACKAGES[package]
    registry = registry_of(spec)
    assert registry.names(), f"{spec} registers nothing"
    assert layout_problems(registry, package, helpers) == []


def test_the_rule_fails_on_the_old_layout():
    """The layout before the names matched (``guides/exact.py`` registered ``bernoulli``, ``guides/amortized.py``
    three guides, ``pyro_ncl/data/idx.py`` two datasets) breaks the rule, line by line."""
    old = Registry("guide")
    for name, module in [("bernoulli", "guides.exact"), ("relaxed_st", "guides.amortized"),
                         ("relaxed_soft", "guides.amortized"), ("exact_k", "guides.exact_k"),
                         ("global", "guides.global_gate"), ("prior", "models.priors")]:
        old.register(name, module=module)(object())
    problems = layout_problems(old, "guides", {"base": ""})
    assert "guide 'bernoulli' is registered in guides.exact; expected guides.bernoulli" in problems
    assert "guide 'relaxed_soft' is registered in guides.amortized; expected guides.relaxed_soft" in problems
    assert "guide 'global' is registered in guides.global_gate; expected guides.global" in problems
    assert "guide 'prior' is registered in models.priors, outside guides" in problems
    assert "guides.budgeted registers no guide and is not a declared helper" in problems
    assert not any("'exact_k'" in line for line in problems)
    datasets = Registry("dataset")
    datasets.register("fashion-mnist", module="pyro_ncl.data.idx")(object())
    problems = layout_problems(datasets, "pyro_ncl.data", {"idx": ""})
    assert "pyro_ncl.data.idx is a declared helper but registers a dataset" in problems
    assert "declared helper pyro_ncl.data.nowhere does not exist" in layout_problems(datasets, "pyro_ncl.data",
                                                                                     {"nowhere": ""})


def test_register_records_the_calling_module():
    registry = Registry("thing")
    registry.register("here")(object())
    registry.register("there", module="somewhere.else")(object())
    assert registry.module("here") == __name__ and registry.module("there") == "somewhere.else"
    with pytest.raises(ValueError, match="unknown thing 'nowhere'; expected one of: here, there"):
        registry.module("nowhere")


SCRIPTS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "experiments").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_is_a_thin_front_of_its_command(script, capsys, monkeypatch):
    """``experiments/X.py`` runs ``pyro_ncl.commands.X.cli`` and nothing else: its code (docstring aside) is the
    import and the ``__main__`` call, so ``--help``, run as the script, prints the usage of the command's parser under
    the script's name and exits 0."""
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{script}.py"
    tree = ast.parse(path.read_text())
    body = [node for node in tree.body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    imports = [node for node in body if isinstance(node, ast.ImportFrom)]
    assert [(node.module, [a.name for a in node.names]) for node in imports] == [(f"pyro_ncl.commands.{script}",
                                                                                  ["cli"])]
    assert all(isinstance(node, (ast.Import, ast.ImportFrom, ast.If)) for node in body), script
    assert ast.get_docstring(tree).count("\n") < 12  # the usage lines, and where the command lives
    module = importlib.import_module(f"pyro_ncl.commands.{script}")
    monkeypatch.setattr("sys.argv", [str(path), "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(path), run_name="__main__")
    assert done.value.code in (0, None)
    printed = capsys.readouterr().out
    assert printed.startswith(f"usage: {path.name}") and "--help" in printed
    assert "options:" in printed and callable(module.cli)
