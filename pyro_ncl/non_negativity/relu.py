"""``relu``: z = ReLU(g(h)), NCL's non-negativity."""
import torch.nn.functional as F

from pyro_ncl.non_negativity import NON_NEGATIVITY

NON_NEGATIVITY.register("relu")(F.relu)
