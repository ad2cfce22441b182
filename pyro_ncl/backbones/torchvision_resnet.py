"""torchvision's ResNets as backbones (untrained), for ``resnet18`` and ``resnet50``; a helper module: it registers
no backbone."""
from __future__ import annotations

import torch.nn as nn
import torchvision


def torchvision_resnet(name: str, in_channels: int, cifar_stem: bool) -> nn.Module:
    """torchvision's ``name`` without weights, its classifier removed (``out_dim``: the pooled feature size); with
    ``cifar_stem`` a 3×3 stride-1 first convolution and no max-pool (small images), else the 7×7 stem taking
    ``in_channels``."""
    net = getattr(torchvision.models, name)(weights=None)
    if cifar_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    net.out_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net
