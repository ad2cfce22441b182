#!/usr/bin/env python
"""Is training data-bound? Loader throughput (images/s, two augmented views each) against the training step's
throughput (forward + backward + SGD step of a small encoder on the same batch), measured in one run.

    python experiments/bench_data.py                     # ≈1 min on 2 CPU cores
    python experiments/bench_data.py --workers 0 2 4 --batch-size 256

The flags: ``--help``; what it measures and writes: ``pyro_ncl/commands/bench_data.py``, whose ``cli`` this runs.
"""
from pyro_ncl.commands.bench_data import cli

if __name__ == "__main__":
    cli()
