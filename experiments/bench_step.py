#!/usr/bin/env python
"""Time one SVI training step (TraceGraph_ELBO.loss_and_grads + SGD) against the same step written in plain
PyTorch (same encoder, gate head, straight-through sample, loss and optimiser), and against a plain-PyTorch
SimCLR step (the same encoder and projector, NT-Xent, no gate), interleaved in one run.

    python experiments/bench_step.py                 # prints the median times, SVI / plain and SVI / SimCLR
    python experiments/bench_step.py --amp bf16 --channels-last --device cuda

ImageNet-100-sized steps and the rest of the flags: ``--help``; what it measures and writes:
``pyro_ncl/commands/bench_step.py``, whose ``cli`` this runs.
"""
from pyro_ncl.commands.bench_step import cli

if __name__ == "__main__":
    cli()
