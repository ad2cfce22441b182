"""``relative``: a value-aware gate relative to each view's strongest activation (a stochastic, soft top-k).

q(m_vd | x_v) = Bernoulli(σ(a_vd)), a_vd = (r_vd − θ_d) / s_d with r_vd = z_vd / max_e z_ve ∈ [0, 1] the entry
relative to the view's largest one, θ_d = σ(φ_d) ∈ (0, 1) a learned per-dimension threshold and s_d = softplus(ρ_d)
a learned scale. An entry is kept when it is close enough to the view's strongest activation: every view keeps at
least its strongest entry (r = 1 > θ), so the gate cannot close a dimension for every image (the collapse that
thresholds on z itself fall into), and a view with one dominant activation keeps only that one — the selection
that the trained top-k gate makes, but per image, learned, with the number kept free. There is no head on h.

Sampling (exact Bernoulli draw, straight-through gradient) and the gate term (the closed-form KL of each view's
gates to the prior) are those of ``relaxed_st``: a valid ELBO of the gated model. z enters detached unless
``--gate-grad-to-backbone``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from guides.base import GUIDES
from guides.relaxed_st import AmortizedGate

THRESHOLD_INIT = 0.25  # θ: keep entries above a quarter of the view's largest
SCALE_INIT = 0.05      # s: a change of 0.05 in r moves the logit by 1


@GUIDES.register("relative")
class RelativeValueGate(AmortizedGate):

    def __init__(self, backbone_dim, hidden_dim, feature_dim, prior, **kwargs):
        super().__init__(backbone_dim, hidden_dim, feature_dim, prior, **kwargs)
        self.head = None  # the gate reads z only
        self.raw_threshold = nn.Parameter(torch.full((feature_dim,), math.log(THRESHOLD_INIT / (1 - THRESHOLD_INIT))))
        self.raw_scale = nn.Parameter(torch.full((feature_dim,), math.log(math.expm1(SCALE_INIT))))

    def threshold(self) -> torch.Tensor:
        """[K] θ_d ∈ (0, 1)."""
        return torch.sigmoid(self.raw_threshold)

    def scale(self) -> torch.Tensor:
        """[K] s_d > 0."""
        return nn.functional.softplus(self.raw_scale)

    def view_logits(self, h: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """normalised z [N, K] → a [N, K] = (z / rowmax(z) − θ) / s, in fp32 (an all-zero row: r = 0)."""
        if z is None:
            raise ValueError("the relative gate reads z: call view_logits/probs/mode with h and z")
        z = (z.detach() if self.detach_features else z).to(self.raw_threshold.dtype)
        r = z / z.amax(-1, keepdim=True).clamp_min(1e-12)
        return (r - self.threshold()) / self.scale()
