#!/usr/bin/env python
"""Data parallelism on the CPU: 1 process against 2 (gloo), side by side in one run.

    OMP_NUM_THREADS=1 python experiments/bench_scaling.py                 # prints three blocks:

1. equality: one ``loss_and_grads`` of the same global batch by 1 and by 2 processes (2 × B/2 images each), in
   float64 and float32: max |difference| of the loss and of every gradient (encoder, gate head). The gates use a
   fixed noise table (rank r gets its rows), so that both runs draw the same gates;
2. throughput: images/s of SVI training steps at the same global batch, 1 process then 2 (alternating
   ``--rounds`` times; each process with ``--threads`` threads), and the speed-up;
3. memory: peak resident memory (``resource.getrusage(...).ru_maxrss``) of a process that runs one default-sized
   step (the default Config: small_resnet width 16, batch 256, K 128, 1×28×28 images), and of the processes above.
"""
from pyro_ncl.commands.bench_scaling import cli

if __name__ == "__main__":
    cli()
