"""Backbones h = f(x), x [N, C, H, W] → h [N, F] (``out_dim`` = F): one module per backbone, named as it is registered
in ``BACKBONES`` (``--backbone resnet18`` is ``resnet18.py``); ``torchvision_resnet`` (torchvision's ResNets adapted)
registers nothing. A backbone is a factory ``(in_channels, width=..., cifar_stem=...) → nn.Module`` with ``out_dim``.
Every module of the package is imported here, so a new backbone is a new file: one factory and its registry line."""
from pyro_ncl.registry import Registry, import_modules

BACKBONES: Registry = Registry("backbone")

import_modules(__name__, __path__)
