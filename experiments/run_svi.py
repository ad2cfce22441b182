#!/usr/bin/env python
"""Train a contrastive method as a Pyro program with SVI (TraceGraph_ELBO), then evaluate it on the test split.

    python experiments/run_svi.py                              # BayesNCL on Fashion-MNIST
    python experiments/run_svi.py --method ncl --out runs/ncl
    python experiments/run_svi.py --dataset imagenet100 --data-root /data/imagenet   # its recipe (docs/usage.md)
    torchrun --nproc_per_node=4 experiments/run_svi.py --batch-size 1024 ...   # 4 processes, 256 images each

Writes to --out: config.json, log.csv, checkpoint.pt, metrics.json, loss.png (the list of a run's outputs:
pyro_ncl.run_folder.OUTPUTS). Bad input: one line on stderr, exit status 2, before anything is written. SIGTERM: a
checkpoint, how to resume, exit status 143. Progress goes to stderr: a bar on a terminal, otherwise a line every
30 s with the ETA (--quiet: none); TensorBoard event files beside log.csv (--no-tensorboard: none). The command line
is ``pyro_ncl.commands.run_svi`` (also ``python -m pyro_ncl.commands.run_svi``), the run ``pyro_ncl.experiment.run`` (from
Python: ``pyro_ncl.run(Config(...))``).
"""
import sys

from pyro_ncl.commands.run_svi import cli

if __name__ == "__main__":
    sys.exit(cli())
