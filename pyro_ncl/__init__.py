"""pyro-ncl: Bayesian gated non-negative contrastive learning as an explicit Pyro program.

    import pyro_ncl
    run = pyro_ncl.run(pyro_ncl.Config(epochs=1, out="runs/quick"))   # pyro_ncl.experiment.run
    pyro_ncl.load_run("runs/quick").encode(x)                          # pyro_ncl.trained_run

The names are imported on first use, so that ``import pyro_ncl.config`` stays light.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {"run": "pyro_ncl.experiment", "resume_settings": "pyro_ncl.experiment", "Config": "pyro_ncl.config",
            "load_run": "pyro_ncl.trained_run", "Run": "pyro_ncl.trained_run"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pyro_ncl' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
