"""Pyro guides over the gate."""
from guides.amortized import GUIDES, AmortizedGate  # noqa: F401
