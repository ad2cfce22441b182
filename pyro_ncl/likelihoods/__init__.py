"""Contrastive likelihoods: modules mapping features of 2B views to a loss (the negative log-likelihood term).

Contract of every likelihood ``lik``:
    ``lik(z, labels)`` with z [2B, K] (row i and row i + B are the two views of image i; the model has already
    normalised and gated them) and labels [B] or None → a scalar: the loss averaged over the 2B views.
    ``lik.requires_labels`` says whether labels are needed (supervised objectives).
Optional (needed for data-parallel training over several processes, see ``pyro_ncl.distributed``):
    ``lik.per_view(z, labels=None, rows=None)`` → [R] the loss of each anchor view in ``rows`` (indices into the
    2B views; default all) against all 2B views, with ``lik(z) == lik.per_view(z).mean()``.
A new likelihood is one module in this package, named as it is registered (``--likelihood nt_xent`` is
``nt_xent.py``): a class with ``@LIKELIHOODS.register(name)`` and a classmethod ``build(feature_dim, config,
num_classes)``. Every module of the package is imported here, so the new file needs no import line.
"""
from pyro_ncl.registry import Registry, import_modules

LIKELIHOODS: Registry = Registry("likelihood")

import_modules(__name__, __path__)

from pyro_ncl.likelihoods.nt_xent import NTXent, nt_xent, nt_xent_per_view  # noqa: E402,F401
from pyro_ncl.likelihoods.bcl import BCL, bcl_loss, bcl_per_view, bcl_weights  # noqa: E402,F401
from pyro_ncl.likelihoods.tricl import TriCL, tricl_loss, tricl_per_view  # noqa: E402,F401
from pyro_ncl.likelihoods.simlap import SimLAP, simlap_loss, simlap_pair_masks  # noqa: E402,F401
