#!/usr/bin/env python
"""What the default gate costs a training step: aten operations (kernel launches on a GPU) and time of one step of
the exactly-k gate alone (one ``ConditionalBernoulli`` of the batch's logits, its SIMPLE sample, its exact KL,
backward), beside the encoder's forward + backward at the same batch, measured in the same run.

    python experiments/bench_gate.py                      # the table, K ∈ {128, 512, 2048}, k ∈ {4, K/32, K/2}
    python experiments/bench_gate.py --device cuda        # on a GPU: CUDA-event times, kernels counted
    python experiments/bench_gate.py --record docs/results/benchmarks.md   # also append a dated entry there

Rows: operations counted by ``torch.profiler`` (every aten op, nested ones included: on a GPU each that computes is
a kernel launch of several µs); time per step (median of ``--repeats``); the encoder's forward + backward at the
same number of views (small_resnet at 28 px), and the gate's share gate / (encoder + gate). Then two checks:

* the ImageNet-100 recipe's shapes: ResNet-18 at 224 px, 8 images = 16 views, K = 2048, k = 64 (π 1/32), the
  gate's share of encoder + gate;
* the budget anneal at K = 2048 (``pyro_ncl.budget``): the gate's mean time per step over the whole anneal, k_t
  from its start to k = 64 (``--anneal-points`` evenly spaced fractions of the anneal), over its time at k, for
  the default schedule (geometric from min(K, max(64, 3k))) and the linear one from K (the anneal before it).

CPU figures depend on the CPU (``lscpu``): compare ratios measured in one run. ``--threads`` sets torch's threads
(default 1: the figures of docs/results/benchmarks.md).
"""
from pyro_ncl.commands.bench_gate import cli

if __name__ == "__main__":
    cli()
