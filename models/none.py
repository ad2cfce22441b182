"""``none``: no prior, for the ungated methods (CL, NCL, triCL, SimLAP, BCL), whose model has no gate."""
from __future__ import annotations

from models.base import PRIORS


@PRIORS.register("none")
class NoPrior:
    """No gate: the ungated methods (CL, NCL, triCL, SimLAP, BCL)."""

    value_kind = None

    @classmethod
    def build(cls, feature_dim, config):
        return None
