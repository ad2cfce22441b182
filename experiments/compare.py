#!/usr/bin/env python
"""Compare finished runs: group them by method (and by the settings that tell the groups apart), across seeds.

    python experiments/compare.py runs/bayesncl_s* runs/ncl_s* --out runs/compare

Reads each run's config.json and metrics.json, and eval/metrics.json (from experiments/evaluate.py) when present,
whose values take precedence. A run without its own metrics.json is unfinished and left out (with a warning); a
metrics file that does not parse stops the comparison, naming it. Null metrics (NaN) count as missing.
A group is the method, plus the parts (prior, guide, likelihood, non-negativity) that differ from the method's
defaults, plus any other setting that differs between runs of that method (seeds, output folders, devices and
similar bookkeeping excepted) where it is not the default: runs that differ only in their seed are pooled, and runs
with, e.g., --prior-prob 0.8 (the default) and 0.2 are labelled "bayesncl" and "bayesncl prior_prob=0.2".
Writes --out/comparison.md (mean ± std (n) per metric, std over runs) and --out/comparison.png (bar plots), and
--out/tensorboard/: a TensorBoard log folder with a run per compared run, named by its group and seed
(``tensorboard --logdir runs/compare/tensorboard``: curves, gate figures and the HPARAMS table side by side).
"""
from pyro_ncl.commands.compare import cli

if __name__ == "__main__":
    cli()
