"""Read pickled data files without running code from them: ``load_data_pickle(path, what)``.

A pickle is a program: its ``GLOBAL`` / ``STACK_GLOBAL`` opcodes import any callable and ``REDUCE`` calls it, so
``pickle.load`` of a crafted "CIFAR batch" runs whatever command it names. ``DataUnpickler`` admits only what a
data file of dicts, lists, tuples, strings, bytes, numbers and numpy arrays needs (the constructors numpy's own
pickles name, in numpy 1.x and 2.x spelling, and ``_codecs.encode``, which protocol-2 pickles use for bytes) and
refuses every other global before it is imported, with one line naming the file and the global. Checkpoints are
read by ``torch.load(weights_only=True)`` instead (``pyro_ncl.checkpoint``), which applies the same rule.
"""
from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any, Callable

# (module, name) a numpy-array pickle may name; numpy 2 moved numpy.core to numpy._core
ALLOWED_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
})
ADMITTED = "dicts, lists, strings, bytes, numbers and numpy arrays"


class RefusedPickle(ValueError):
    """A pickle that names a global outside ``ALLOWED_GLOBALS``; the message names the file and the global."""


class DataUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` whose ``find_class`` admits only ``ALLOWED_GLOBALS`` (imported by name, after the
    check) and raises ``RefusedPickle`` for anything else, so the refused callable is never imported or called."""

    def __init__(self, file, source: str, what: str, **kwargs):
        super().__init__(file, **kwargs)
        self.source, self.what = source, what

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise RefusedPickle(f"refusing {self.source}: loading it would call {module}.{name}, which a {self.what} "
                                f"does not hold (only {ADMITTED} are read; it may be crafted to run code)")
        if module.startswith("numpy.core."):  # numpy 1.x pickles, read by numpy 2 without its deprecation warning
            try:
                return getattr(importlib.import_module("numpy._core." + module[len("numpy.core."):]), name)
            except ImportError:
                pass
        return getattr(importlib.import_module(module), name)

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle(f"refusing {self.source}: it refers to persistent objects, which a {self.what} does not "
                            f"hold")


def load_data_pickle(path: Path, what: str = "data file", encoding: str = "latin1",
                     reason: Callable[[BaseException], str] = lambda err: str(err).splitlines()[0]) -> Any:
    """The object pickled in ``path``, read by ``DataUnpickler`` (``encoding`` for Python 2 strings, as torchvision
    reads CIFAR). A refused global: ``RefusedPickle``; a file that is not a pickle: a one-line ValueError naming it
    (``reason`` formats the error)."""
    with open(path, "rb") as f:
        try:
            return DataUnpickler(f, str(path), what, encoding=encoding).load()
        except RefusedPickle:
            raise
        except Exception as err:  # UnpicklingError, EOFError, a numpy error on a bad array state, ...
            raise ValueError(f"{path} is not a {what}: {reason(err)!r}") from None
