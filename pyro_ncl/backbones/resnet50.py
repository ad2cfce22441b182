"""``resnet50``: torchvision's ResNet-50 (untrained; ``--cifar-stem`` for small images)."""
from __future__ import annotations

import torch.nn as nn

from pyro_ncl.backbones import BACKBONES
from pyro_ncl.backbones.torchvision_resnet import torchvision_resnet


@BACKBONES.register("resnet50")
def resnet50(in_channels: int, width: int = 16, cifar_stem: bool = False) -> nn.Module:
    return torchvision_resnet("resnet50", in_channels, cifar_stem)
