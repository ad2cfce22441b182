#!/usr/bin/env python
"""Count the host-device synchronisations per training step, for each data path and method: the moments the host
waits for the GPU (each one drains the GPU's queue of work; the goal is one per step, the ELBO's value).

    python experiments/count_syncs.py                  # on CUDA when there is one; prints a table, exit 1 if over
    python experiments/count_syncs.py --device cpu     # what can be counted without a GPU (see below)

The flags: ``--help``; what it measures and writes: ``pyro_ncl/commands/count_syncs.py``, whose ``cli`` this runs.
"""
import sys

from pyro_ncl.commands.count_syncs import cli

if __name__ == "__main__":
    sys.exit(cli())
