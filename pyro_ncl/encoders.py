"""Encoders: backbone h = f(x) and projector z = σ₊(g(h)) with a choice of non-negativity σ₊.

Shapes: x [N, C, H, W] → h [N, F] → z [N, K].
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from pyro_ncl.budget import Budget, check_budget, default_anneal_epochs, default_topk
from pyro_ncl.registry import Registry

BACKBONES: Registry = Registry("backbone")
NON_NEGATIVITY: Registry = Registry("non-negativity")


# ---------------------------------------------------------------- non-negativity
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


def rep_relu(x: torch.Tensor) -> torch.Tensor:
    return _RepReLU.apply(x)


NON_NEGATIVITY.register("none")(lambda x: x)
NON_NEGATIVITY.register("relu")(F.relu)
NON_NEGATIVITY.register("rep_relu")(rep_relu)


@NON_NEGATIVITY.register("topk")
class TopK(nn.Module):
    """ReLU, then each row's k largest entries kept and the rest set to 0: the top-k activation of k-sparse
    autoencoders and CSR (``--method ncl_topk``), trained end to end; gradients reach the kept entries only. k
    follows ``pyro_ncl.budget.Budget``: from ``--budget-start`` down to ``--topk`` over ``--budget-anneal-epochs`` in training, ``--topk``
    in evaluation mode. Deterministic: no latent variable, no prior. [N, K] → [N, K]."""

    def __init__(self, feature_dim: int, k: int, anneal_epochs: float = 0.0, schedule: str = "geometric",
                 start: Optional[int] = None):
        super().__init__()
        self.budget = Budget(feature_dim, check_budget(k, feature_dim, "--topk"), anneal_epochs, schedule, start)

    @classmethod
    def build(cls, feature_dim: int, topk=None, anneal_epochs=None, epochs: int = 1, schedule: str = "geometric",
              start: Optional[int] = None) -> "TopK":
        return cls(feature_dim, topk if topk is not None else default_topk(feature_dim),
                   anneal_epochs if anneal_epochs is not None else default_anneal_epochs(epochs), schedule, start)

    def set_progress(self, epochs_done: float) -> None:
        self.budget.set_progress(epochs_done)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        k = self.budget.now(self.training)
        if k >= x.shape[-1]:
            return x
        keep = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, torch.topk(x, k, dim=-1).indices, True)
        return torch.where(keep, x, torch.zeros_like(x))


# ---------------------------------------------------------------- backbones
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A 4-stage ResNet (one basic block of two 3×3 convs per stage, widths w, 2w, 4w, 8w) for 28–32 px
    images on a CPU. Output: global-average-pooled features of size 8·width."""

    def __init__(self, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        widths = [width, 2 * width, 4 * width, 8 * width]
        blocks, cin = [], width
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(cin, w, 1 if i == 0 else 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = cin

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)


@BACKBONES.register("small_resnet")
def small_resnet(in_channels: int, width: int = 16, cifar_stem: bool = True) -> nn.Module:
    return SmallResNet(in_channels, width)


def _torchvision_resnet(name: str, in_channels: int, cifar_stem: bool) -> nn.Module:
    net = getattr(torchvision.models, name)(weights=None)
    if cifar_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    net.out_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


@BACKBONES.register("resnet18")
def resnet18(in_channels: int, width: int = 16, cifar_stem: bool = False) -> nn.Module:
    return _torchvision_resnet("resnet18", in_channels, cifar_stem)


@BACKBONES.register("resnet50")
def resnet50(in_channels: int, width: int = 16, cifar_stem: bool = False) -> nn.Module:
    return _torchvision_resnet("resnet50", in_channels, cifar_stem)


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
