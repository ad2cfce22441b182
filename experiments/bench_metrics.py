#!/usr/bin/env python
"""Benchmark: the chunked, vectorised metric suite against a per-dimension numpy loop (the authors' style).

    python experiments/bench_metrics.py --num-samples 10000 --num-dims 2048

The flags: ``--help``; what it measures and writes: ``pyro_ncl/commands/bench_metrics.py``, whose ``cli`` this runs.
"""
from pyro_ncl.commands.bench_metrics import cli

if __name__ == "__main__":
    cli()
