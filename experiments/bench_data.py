#!/usr/bin/env python
"""Is training data-bound? Loader throughput (images/s, two augmented views each) against the training step's
throughput (forward + backward + SGD step of a small encoder on the same batch), measured in one run.

    python experiments/bench_data.py                     # ≈1 min on 2 CPU cores
    python experiments/bench_data.py --workers 0 2 4 --batch-size 256

Datasets: Fashion-MNIST in memory (views made by BatchAugment on the device; no worker processes) and a fake
ImageNet-100 ImageFolder tree of random JPEGs built in a temporary folder (decoded and augmented per image by a
DataLoader with --workers worker processes). Loader and step are timed separately: on a machine with few cores a
real run shares the cores between them.
"""
from pyro_ncl.commands.bench_data import cli

if __name__ == "__main__":
    cli()
