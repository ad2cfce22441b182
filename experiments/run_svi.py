#!/usr/bin/env python
"""Train a contrastive method as a Pyro program with SVI (TraceGraph_ELBO), then evaluate it on the test split.

    python experiments/run_svi.py                              # BayesNCL on Fashion-MNIST
    python experiments/run_svi.py --method ncl --out runs/ncl
    python experiments/run_svi.py --dataset imagenet100 --data-root /data/imagenet   # its recipe (docs/usage.md)

The flags: ``--help``; what it measures and writes: ``pyro_ncl/commands/run_svi.py``, whose ``cli`` this runs.
"""
import sys

from pyro_ncl.commands.run_svi import cli

if __name__ == "__main__":
    sys.exit(cli())
