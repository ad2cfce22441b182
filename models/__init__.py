"""Pyro models: the gated contrastive model (``models.contrastive``) and the priors over its gate, one module per
prior, named as it is registered in ``PRIORS`` (``--prior bernoulli`` is ``models/bernoulli.py``); ``base`` (the
shared shape and the registry) and ``contrastive`` register nothing. Every module of the package is imported here,
so a new prior is a new file: one class and its registry line."""
from models.base import PRIORS, GatePrior  # noqa: F401
from pyro_ncl.registry import import_modules

import_modules(__name__, __path__)

from models.contrastive import ContrastiveModel  # noqa: E402,F401
from models.rate import AggregateRatePenalty  # noqa: E402,F401
