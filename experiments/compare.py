#!/usr/bin/env python
"""Compare finished runs: group them by method (and by the settings that tell the groups apart), across seeds.

    python experiments/compare.py runs/bayesncl_s* runs/ncl_s* --out runs/compare

The flags: ``--help``; what it measures and writes: ``pyro_ncl/commands/compare.py``, whose ``cli`` this runs.
"""
from pyro_ncl.commands.compare import cli

if __name__ == "__main__":
    cli()
