"""Name → factory registries: the only place where method, prior, guide, likelihood, dataset and backbone
names live. ``--help`` lists ``registry.names()``; an unknown name is a one-line error listing the known ones.

A registry of parts (guides, priors, likelihoods, datasets, backbones, non-negativities) lives in a package with one
module per registered name, the module named as the part (``--guide bernoulli`` is ``guides/bernoulli.py``; a "-"
in the name is "_" in the file: ``fashion-mnist`` is ``pyro_ncl/data/fashion_mnist.py``). ``register`` records the
module that registered each name (``Registry.module``), and the package imports all its modules with
``import_modules``, so a new part is a new file: one class (or factory) and its registry line.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import Callable, Dict, Generic, Iterable, List, Optional, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}
        self._modules: Dict[str, str] = {}

    def register(self, name: str, module: Optional[str] = None) -> Callable[[T], T]:
        """Decorator: ``@PRIORS.register("bernoulli")``. ``module``: the module that registers the name (default:
        the caller's, the module whose body holds the registry line)."""
        module = module if module is not None else sys._getframe(1).f_globals["__name__"]

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            self._modules[name] = module
            return item
        return add

    def __getitem__(self, name: str) -> T:
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of: {', '.join(self.names())}")
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self) -> List[str]:
        return sorted(self._items)

    def module(self, name: str) -> str:
        """The dotted name of the module that registered ``name`` (``guides.bernoulli``)."""
        self[name]  # an unknown name: the one-line error
        return self._modules[name]


def import_modules(package: str, path: Iterable[str]) -> None:
    """Import every module of the package ``package`` (its ``__path__``: ``path``) in name order, so that each
    registers its parts: a new part needs no import line, and a module named after a Python keyword
    (``guides/global.py``) is imported all the same."""
    for info in sorted(pkgutil.iter_modules(path), key=lambda info: info.name):
        importlib.import_module(f"{package}.{info.name}")
