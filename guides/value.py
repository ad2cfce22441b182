"""``value``: a value-aware gate (a stochastic JumpReLU).

q(m_vd | x_v) = Bernoulli(σ(a_vd)) with a_vd = (z_vd − θ_d) / s_d + head(h_v)_d, where z is the normalised
non-negative projector output, θ_d a learned per-dimension threshold and s_d = softplus(ρ_d) a learned scale. The
gate can remove a view's weak activations of a dimension while keeping its strong ones — image by image, which a
gate on h alone can only learn indirectly. At test time the mode 1[a > 0] is a JumpReLU of z with a threshold per
dimension (shifted by the head). Zero entries of z get logits −θ_d / s_d + head: their gates are closed once θ > 0.

Sampling, gradient (straight-through) and the gate term (the closed-form KL of each view's Bernoulli gates to the
prior) are those of ``relaxed_st``, so the objective is the same valid ELBO; only the amortisation reads z. z enters
the logits detached unless ``--gate-grad-to-backbone`` (as h does).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from guides.base import GUIDES
from guides.relaxed_st import AmortizedGate

THRESHOLD_INIT = 0.02  # θ: below the smallest typical active entry of a normalised sparse z (≈ 1/√K)
SCALE_INIT = 0.02      # s: a change of 0.02 in z moves the logit by 1


@GUIDES.register("value")
class ValueAwareGate(AmortizedGate):

    def __init__(self, backbone_dim, hidden_dim, feature_dim, prior, **kwargs):
        super().__init__(backbone_dim, hidden_dim, feature_dim, prior, **kwargs)
        self.threshold = nn.Parameter(torch.full((feature_dim,), THRESHOLD_INIT))
        self.raw_scale = nn.Parameter(torch.full((feature_dim,), math.log(math.expm1(SCALE_INIT))))

    def scale(self) -> torch.Tensor:
        """[K] s_d = softplus(ρ_d) > 0."""
        return nn.functional.softplus(self.raw_scale)

    def view_logits(self, h: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """h [N, F], normalised z [N, K] → a [N, K] = (z − θ) / s + head(h), in fp32."""
        if z is None:
            raise ValueError("the value-aware gate reads z: call view_logits/probs/mode with h and z")
        z = (z.detach() if self.detach_features else z).to(self.threshold.dtype)
        return self.logits(h) + (z - self.threshold) / self.scale()
