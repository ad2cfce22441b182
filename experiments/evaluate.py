#!/usr/bin/env python
"""Re-evaluate a finished run with the full metric suite, and draw its figures (network in eval mode).

    python experiments/evaluate.py runs/bayesncl
    python experiments/evaluate.py runs/ncl --device cuda --tsne-samples 5000
    python experiments/evaluate.py runs/chosen --split test    # a run with --val-size: its test split, once

Writes RUN_DIR/eval/ (the run's own metrics.json is left alone):
    metrics.json                 the run's end-of-run metrics recomputed (linear probes on h and on the features,
                                 kNN, ...), the interpretability suite (test), retrieval P@1/3/5/10 and feature
                                 selection for k = 16, 32, ..., K (k = K: the probe on all features)
    gate_frequency_by_class.png  classes × dimensions: fraction of each class's test images opening the gate (gated)
    top_dims.png                 the test images that activate the most important dimensions most
    retrieval.png                retrieval precision against k
    sparsity.png                 histogram of the per-image fraction of active dimensions
    tsne.png                     2-D t-SNE of a sample of test features, coloured by class
Dimensions are ranked by an importance computed on the TRAIN split: the gate open frequency (gated runs), triCL's
s (likelihoods with an ``importance``), else the column sums of the row-normalised features.
"""
from pyro_ncl.commands.evaluate import cli

if __name__ == "__main__":
    cli()
