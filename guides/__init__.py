"""Pyro guides over the gate: one module per family, each registered in ``GUIDES`` by name."""
from guides.base import GUIDES, GateGuide  # noqa: F401
from guides.amortized import AmortizedGate, NoGate, RelaxedSoftGate  # noqa: F401
from guides.exact import ExactBernoulliGate  # noqa: F401
from guides.deterministic import ThresholdGate  # noqa: F401
from guides.global_gate import GlobalGate  # noqa: F401
from guides.image_gate import ImageGate  # noqa: F401
from guides.value_gate import ValueAwareGate  # noqa: F401
from guides.exact_k import ExactKGate  # noqa: F401
from guides.budget_gate import BudgetGate  # noqa: F401
from guides.relative_gate import RelativeValueGate  # noqa: F401
from guides.disarm import DisarmGate  # noqa: F401
from guides.exact_k_aux import ExactKAuxGate  # noqa: F401
