#!/usr/bin/env python
"""Export a trained run's features, per image, to a .npz file: a split of its dataset or a folder of images.

    python experiments/extract.py runs/mine --split test --out runs/mine/test_features.npz
    python experiments/extract.py runs/mine --images new_images/ --out new_features.npz --device cuda

The flags: ``--help``; what it measures and writes: ``pyro_ncl/commands/extract.py``, whose ``cli`` this runs.
"""
from pyro_ncl.commands.extract import cli

if __name__ == "__main__":
    cli()
