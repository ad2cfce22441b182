"""Pyro models: priors over the gate (``models.priors``) and the gated contrastive model (``models.contrastive``)."""
from models.priors import PRIORS, GatePrior  # noqa: F401
from models.contrastive import ContrastiveModel  # noqa: F401
from models.rate_prior import AggregateRatePrior  # noqa: F401
