"""Pyro guides over the gate: one module per guide, named as it is registered in ``GUIDES`` (``--guide bernoulli`` is
``guides/bernoulli.py``); ``base`` (the shared shape and the registry) and ``budgeted`` (the budget mixin) register
nothing. Every module of the package is imported here, so a new guide is a new file: one class and its registry
line."""
from importlib import import_module

from guides.base import GUIDES, GateGuide  # noqa: F401
from pyro_ncl.registry import import_modules

import_modules(__name__, __path__)

from guides.bernoulli import ExactBernoulliGate  # noqa: E402,F401
from guides.budget_st import BudgetGate  # noqa: E402,F401
from guides.deterministic import ThresholdGate  # noqa: E402,F401
from guides.disarm import DisarmGate  # noqa: E402,F401
from guides.exact_k import ExactKGate  # noqa: E402,F401
from guides.exact_k_aux import ExactKAuxGate  # noqa: E402,F401
from guides.image import ImageGate  # noqa: E402,F401
from guides.none import NoGate  # noqa: E402,F401
from guides.relative import RelativeValueGate  # noqa: E402,F401
from guides.relaxed_soft import RelaxedSoftGate  # noqa: E402,F401
from guides.relaxed_st import AmortizedGate  # noqa: E402,F401
from guides.value import ValueAwareGate  # noqa: E402,F401

GlobalGate = import_module("guides.global").GlobalGate  # ``global`` is a keyword: no import statement names it
