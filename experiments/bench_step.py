#!/usr/bin/env python
"""Time one SVI training step (TraceGraph_ELBO.loss_and_grads + SGD) against the same step written in plain
PyTorch (same encoder, gate head, straight-through sample, loss and optimiser), and against a plain-PyTorch
SimCLR step (the same encoder and projector, NT-Xent, no gate), interleaved in one run.

    python experiments/bench_step.py                 # prints the median times, SVI / plain and SVI / SimCLR
    python experiments/bench_step.py --amp bf16 --channels-last --device cuda
                                                     # also times the fp32 SVI step: ratio with / without
    python experiments/bench_step.py --backbone resnet18 --no-cifar-stem --channels 3 --size 224 --batch-size 128 \
        --hidden-dim 16384 --feature-dim 2048 --device cuda           # ImageNet-100-sized (the preset's model)

With --amp/--channels-last/--compile the SVI, plain and SimCLR steps use them (``system.accelerate``: autocast
of the encoder only); the unaccelerated SVI step is timed alongside, interleaved in the same run. The back-ends
are set as ``run_svi`` sets them (cuDNN benchmark and TF32 on CUDA unless --deterministic). Every tensor of a step
(images, indices, labels) is made on --device.
"""
from pyro_ncl.commands.bench_step import cli

if __name__ == "__main__":
    cli()
