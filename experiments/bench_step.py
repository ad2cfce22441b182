#!/usr/bin/env python
"""Time one SVI training step (TraceGraph_ELBO.loss_and_grads + SGD) against the same step written in plain
PyTorch (same encoder, gate head, straight-through sample, loss and optimiser), and against a plain-PyTorch
SimCLR step (the same encoder and projector, NT-Xent, no gate), interleaved in one run.

    python experiments/bench_step.py                 # prints the median times, SVI / plain and SVI / SimCLR
    python experiments/bench_step.py --amp bf16 --channels-last --device cuda
    python experiments/bench_step.py --backbone resnet18 --no-cifar-stem --channels 3 --size 224 --batch-size 128 \
        --hidden-dim 16384 --feature-dim 2048 --device cuda           # ImageNet-100-sized (the preset's model)

The flags: ``--help``; what it measures and writes: ``pyro_ncl/commands/bench_step.py``, whose ``cli`` this runs.
"""
from pyro_ncl.commands.bench_step import cli

if __name__ == "__main__":
    cli()
