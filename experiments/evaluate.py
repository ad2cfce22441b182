#!/usr/bin/env python
"""Re-evaluate a finished run with the full metric suite, and draw its figures (network in eval mode).

    python experiments/evaluate.py runs/bayesncl
    python experiments/evaluate.py runs/ncl --device cuda --tsne-samples 5000
    python experiments/evaluate.py runs/chosen --split test    # a run with --val-size: its test split, once

The flags: ``--help``; what it measures and writes: ``pyro_ncl/commands/evaluate.py``, whose ``cli`` this runs.
"""
from pyro_ncl.commands.evaluate import cli

if __name__ == "__main__":
    cli()
