#!/usr/bin/env python
"""What the default gate costs a training step: aten operations (kernel launches on a GPU) and time of one step of
the exactly-k gate alone (one ``ConditionalBernoulli`` of the batch's logits, its SIMPLE sample, its exact KL,
backward), beside the encoder's forward + backward at the same batch, measured in the same run.

    python experiments/bench_gate.py                      # the table, K ∈ {128, 512, 2048}, k ∈ {4, K/32, K/2}
    python experiments/bench_gate.py --device cuda        # on a GPU: CUDA-event times, kernels counted
    python experiments/bench_gate.py --record docs/results/benchmarks.md   # also append a dated entry there

The flags: ``--help``; what it measures and writes: ``pyro_ncl/commands/bench_gate.py``, whose ``cli`` this runs.
"""
from pyro_ncl.commands.bench_gate import cli

if __name__ == "__main__":
    cli()
