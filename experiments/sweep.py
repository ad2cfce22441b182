#!/usr/bin/env python
"""Run ``run_svi.py`` over a grid of settings and tabulate the results (markdown + CSV) and plot them.

    python experiments/sweep.py --out runs/sweep --grid prior_prob=0.2,0.5,0.8 --grid kl_weight=3e-5,3e-3 \
        -- --subset 10000 --epochs 5

The flags: ``--help``; what it measures and writes: ``pyro_ncl/commands/sweep.py``, whose ``cli`` this runs.
"""
from pyro_ncl.commands.sweep import cli

if __name__ == "__main__":
    cli()
