#!/usr/bin/env python
"""How sure is the gate? Per-image uncertainty scores of trained runs, side by side with deterministic ones.

    python experiments/uncertainty.py runs/bayesncl_s0 runs/bayesncl_s1 runs/bayesncl_s2 runs/ncl_s* --out runs/unc

The flags: ``--help``; what it measures and writes: ``pyro_ncl/commands/uncertainty.py``, whose ``cli`` this runs.
"""
from pyro_ncl.commands.uncertainty import cli

if __name__ == "__main__":
    cli()
