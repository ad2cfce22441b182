"""Encoders: backbone h = f(x) and projector z = σ₊(g(h)) with a choice of non-negativity σ₊.

Shapes: x [N, C, H, W] → h [N, F] → z [N, K]. The backbones are registered in ``BACKBONES``
(``pyro_ncl.backbones``, one module each), the non-negativities in ``NON_NEGATIVITY`` (``pyro_ncl.non_negativity``).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn

from pyro_ncl.backbones import BACKBONES
from pyro_ncl.non_negativity import NON_NEGATIVITY


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear · ReLU · Linear: the projector, and the gate head shaped like it."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


class Encoder(nn.Module):
    """x [N, C, H, W] → (h [N, F], z [N, K]) with z = σ₊(projector(h)). A non-negativity registered as a class
    (``topk``) is built with ``activation_options`` (its ``build`` keywords) and becomes a submodule (it follows
    train/eval mode and the training progress, ``set_progress``)."""

    def __init__(self, backbone: nn.Module, hidden_dim: int, feature_dim: int, non_negativity: str = "relu",
                 **activation_options):
        super().__init__()
        if feature_dim < 1:
            raise ValueError(f"feature dimension must be at least 1, got {feature_dim}")
        self.backbone = backbone
        self.projector = mlp(backbone.out_dim, hidden_dim, feature_dim)
        self.non_negativity = non_negativity
        activation = NON_NEGATIVITY[non_negativity]
        self._activation = activation.build(feature_dim, **activation_options) if isinstance(activation, type) \
            else activation

    def set_progress(self, epochs_done: float) -> None:
        """Training progress (epochs, fractional) for an activation with a schedule (the top-k curriculum)."""
        if hasattr(self._activation, "set_progress"):
            self._activation.set_progress(epochs_done)

    @property
    def backbone_dim(self) -> int:
        return self.backbone.out_dim

    @property
    def feature_dim(self) -> int:
        return self.projector[-1].out_features

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        return h, self._activation(self.projector(h))


def build_encoder(backbone: str, in_channels: int, width: int, cifar_stem: bool, hidden_dim: int,
                  feature_dim: int, non_negativity: str, **activation_options) -> Encoder:
    """``activation_options``: the ``build`` keywords of a non-negativity registered as a class (``topk``: topk,
    anneal_epochs, epochs, schedule, start); ignored by the others."""
    net = BACKBONES[backbone](in_channels, width=width, cifar_stem=cifar_stem)
    if not isinstance(NON_NEGATIVITY[non_negativity], type):
        activation_options = {}
    return Encoder(net, hidden_dim, feature_dim, non_negativity, **activation_options)
