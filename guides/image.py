"""``image``: one gate per image, shared by its two views.

q(m_i | x_i) = Π_d Bernoulli(σ(a_id)), a_i = ½ (head(h_i¹) + head(h_i²)): the logits of the image's two views
averaged (at test time, one image: a = head(h)). Both views are gated by the same mask, so the gate's noise no
longer differs between the views of an image (the per-view gate's noise costs alignment, which pushes gates open).
The model has the matching plate over the N images (``pyro_ncl.scopes.ImageScope``): the gate term of the ELBO is
one KL per image, β · ½ · mean_i Σ_d KL(q(m_id) ‖ p(m_id)) per view. The sample is the exact Bernoulli draw with
the straight-through gradient, as in ``relaxed_st``.
"""
from __future__ import annotations

from guides.base import GUIDES
from guides.relaxed_st import AmortizedGate
from pyro_ncl.scopes import IMAGE


@GUIDES.register("image")
class ImageGate(AmortizedGate):
    scope = IMAGE
