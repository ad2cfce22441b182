#!/usr/bin/env python
"""The consistency–accuracy front, in a protocol that cannot flatter a gate: designs × their sparsity knob × seeds,
against NCL sparsified after training and the trained top-k activation, every choice made on a validation split and
the test split read once, for the final table.

    python experiments/frontier.py --out runs/frontier -- --subset 10000 --epochs 5            # 1. select (val)
    python experiments/frontier.py --out runs/frontier --final -- --subset 10000 --epochs 5    # 2. report (test)
    python experiments/frontier.py --out runs/frontier --summary-only                         # tables again

The flags: ``--help``; what it measures and writes: ``pyro_ncl/commands/frontier.py``, whose ``cli`` this runs.
"""
import sys

from pyro_ncl.commands.frontier import cli

if __name__ == "__main__":
    sys.exit(cli())
