#!/usr/bin/env python
"""Time the default run against ``--method ncl``, back to back on this machine, and optionally the test suite.

    python experiments/timing.py --out runs/timing --record docs/results/timing.md     # full Fashion-MNIST, 5 epochs
    python experiments/timing.py --out runs/timing --suite                             # also the test suite
    python experiments/timing.py --out runs/t -- --subset 1024 --epochs 1              # flags after -- go to both runs

Each run is ``experiments/run_svi.py`` in a subprocess (``--overwrite`` in OUT/bayesncl and OUT/ncl); the table gives
its wall time and the training and evaluation seconds it records in metrics.json, and the default's training time
over NCL's (the issue's goal: at most 1.10). Time on a quiet machine: other work on the cores changes the ratio.
``--record PAGE`` appends the table to a results page as a dated entry with the command, commit and CPU.
"""
from pyro_ncl.commands.timing import cli

if __name__ == "__main__":
    cli()
