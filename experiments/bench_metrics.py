#!/usr/bin/env python
"""Benchmark: the chunked, vectorised metric suite against a per-dimension numpy loop (the authors' style).

Features: sparse non-negative random features with class-dependent activation rates (some dimensions dead).
Reference: loops over dimensions; for each, the class histogram of its active samples (np.bincount) and the per-class
summed activations, and in a second loop the |cosine| with every other active column; effective rank from
np.linalg.svd of F. Both run in this process, one after the other, each timed as the median of --repeats calls;
peak memory is the rise of the resident set (VmHWM, reset before each). A table splits the time by stage.

    python experiments/bench_metrics.py --num-samples 10000 --num-dims 2048
"""
from pyro_ncl.commands.bench_metrics import cli

if __name__ == "__main__":
    cli()
