#!/usr/bin/env python
"""Run ``run_svi.py`` over a grid of settings and tabulate the results (markdown + CSV) and plot them.

    python experiments/sweep.py --out runs/sweep --grid prior_prob=0.2,0.5,0.8 --grid kl_weight=3e-5,3e-3 \
        --reference runs/ncl -- --subset 10000 --epochs 3

Each ``--grid KEY=V1,V2`` is an axis (a Config field; ``KEY1+KEY2=A+B,C+D`` varies fields together); the runs are
the Cartesian product. Flags after ``--`` go to every run. Every point's settings (and every ``--reference``) are
checked before the first run. A point whose folder holds a finished run with the same settings is not run again,
one with an interrupted run of the same settings is resumed, and one holding a run with other settings is refused
(choose another --out: an earlier result is never overwritten), so an interrupted or extended sweep picks up where it
stopped (``pyro_ncl.launcher``). Two sweeps sharing --out never run a point at once (the run folder's lock refuses
the second). Writes ``results.csv``, ``results.md`` and ``sweep.png`` to --out; the exit status is 1 when a point
failed. Every run writes its TensorBoard events in its folder, so ``tensorboard --logdir <--out>`` compares them
(HPARAMS tab: settings against final metrics); ``--reference`` runs appear there as ``references/<name>`` (links).
The sweep itself is ``pyro_ncl.sweep.run_sweep``.
"""
from pyro_ncl.commands.sweep import cli

if __name__ == "__main__":
    cli()
