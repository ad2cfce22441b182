"""Non-negativities σ₊ of the projector output, z = σ₊(g(h)), [N, K] → [N, K]: one module per non-negativity, named
as it is registered in ``NON_NEGATIVITY`` (``--non-neg rep_relu`` is ``rep_relu.py``). A non-negativity is a
function, or a module class with ``build(feature_dim, **options)`` (``topk``), which the ``Encoder`` builds and holds
as a submodule. Every module of the package is imported here, so a new one is a new file and its registry line."""
from pyro_ncl.registry import Registry, import_modules

NON_NEGATIVITY: Registry = Registry("non-negativity")

import_modules(__name__, __path__)
