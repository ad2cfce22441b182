#!/usr/bin/env python
"""Time the default run against ``--method ncl``, back to back on this machine, and optionally the test suite.

    python experiments/timing.py --out runs/timing --record docs/results/timing.md     # full Fashion-MNIST, 5 epochs
    python experiments/timing.py --out runs/timing --suite                             # also the test suite
    python experiments/timing.py --out runs/t -- --subset 1024 --epochs 1              # flags after -- go to both runs

The flags: ``--help``; what it measures and writes: ``pyro_ncl/commands/timing.py``, whose ``cli`` this runs.
"""
from pyro_ncl.commands.timing import cli

if __name__ == "__main__":
    cli()
