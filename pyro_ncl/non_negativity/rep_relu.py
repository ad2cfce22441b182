"""``rep_relu``: ReLU forward, GELU's gradient backward (NCL's ``rep_relu``: no dead units)."""
from __future__ import annotations

import torch

from pyro_ncl.non_negativity import NON_NEGATIVITY


class _RepReLU(torch.autograd.Function):
    """Forward ReLU(x); backward the gradient of GELU(x) (NCL's ``rep_relu``: no dead units)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        cdf = 0.5 * (1.0 + torch.erf(x * 0.7071067811865476))
        pdf = torch.exp(-0.5 * x * x) * 0.3989422804014327
        return grad_out * (cdf + x * pdf)


@NON_NEGATIVITY.register("rep_relu")
def rep_relu(x: torch.Tensor) -> torch.Tensor:
    return _RepReLU.apply(x)
