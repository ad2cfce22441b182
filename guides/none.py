"""``none``: the guide of the ungated methods (CL, NCL, triCL, SimLAP, BCL): the model has no latent variable."""
from __future__ import annotations

import pyro
import torch.nn as nn
from pyro.infer import TraceGraph_ELBO

from guides.base import GUIDES
from pyro_ncl.batch import EncodedBatch


@GUIDES.register("none")
class NoGate(nn.Module):
    """The guide of the ungated methods: the model has no latent variable."""

    value_kind = None
    reparameterized = True
    analytic_kl = True

    @classmethod
    def build(cls, encoder, prior, config):
        return cls()

    def make_elbo(self):
        return TraceGraph_ELBO()

    def guide(self, batch: EncodedBatch):
        pyro.module("guide", self)
