#!/usr/bin/env python
"""Data parallelism on the CPU: 1 process against 2 (gloo), side by side in one run.

The flags: ``--help``; what it measures and writes: ``pyro_ncl/commands/bench_scaling.py``, whose ``cli`` this runs.
"""
from pyro_ncl.commands.bench_scaling import cli

if __name__ == "__main__":
    cli()
