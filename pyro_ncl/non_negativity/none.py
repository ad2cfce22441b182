"""``none``: no non-negativity, z = g(h) (the plain contrastive baseline)."""
from pyro_ncl.non_negativity import NON_NEGATIVITY

NON_NEGATIVITY.register("none")(lambda x: x)
