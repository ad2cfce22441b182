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
from __future__ import annotations

import sys

from pyro_ncl.cli import OneLineParser, exit_on_bad_input
from pyro_ncl.sweep import run_sweep


def parser() -> OneLineParser:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder of the sweep (one subfolder per run)")
    p.add_argument("--grid", action="append", default=[], help="an axis KEY=V1,V2 (repeatable)")
    p.add_argument("--reference", action="append", default=[], help="finished run folders to add to the table")
    return p


if __name__ == "__main__":
    argv = sys.argv[1:]
    run_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parsed = parser().parse_args(argv)
    parsed.run_args = run_args
    exit_on_bad_input(run_sweep, parsed)
