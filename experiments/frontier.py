#!/usr/bin/env python
"""The consistency–accuracy front, in a protocol that cannot flatter a gate: designs × their sparsity knob × seeds,
against NCL sparsified after training and the trained top-k activation, every choice made on a validation split and
the test split read once, for the final table.

    python experiments/frontier.py --out runs/frontier -- --subset 10000 --epochs 5            # 1. select (val)
    python experiments/frontier.py --out runs/frontier --final -- --subset 10000 --epochs 5    # 2. report (test)
    python experiments/frontier.py --out runs/frontier --summary-only                         # tables again

1. *Selection.* Every run holds out the last ``--val-size`` training images (10,000) as a validation split
   (``run_svi.py --val-size``: training and ``--subset`` use the images before them, the run evaluates on the
   validation split and never reads the test split). Designs come from ``--designs-file`` (default
   experiments/frontier_designs.yaml): per design the run_svi.py settings (``flags``), the knob swept (``knob``),
   ``posthoc: true`` for NCL's features sparsified after training (a dense grid: ``pyro_ncl.frontier``) and
   ``candidate: true`` for the Bayesian designs that may become the default. Each run is measured on the
   validation split (RUN_DIR/frontier.json). Then, on the validation split only: each design's chosen point (its
   most consistent setting and test gate within 1 point of NCL's kNN and linear probe on h), its margins over NCL +
   threshold, NCL + top-k, all post-hoc cuts together and ``ncl_topk``, each paired by seed at the design's own kNN
   (mean ± std, wins out of n), and the default: the candidate with the largest mean margin over the post-hoc
   front. Writes OUT/frontier.md, OUT/frontier.json, OUT/frontier.png and OUT/selection.json.
2. *Final* (``--final``): the chosen points (a design without a point within 1 point of NCL: its widest point, the
   one furthest above the post-hoc cuts; the default: the point ``selection.json`` names) and NCL, with
   ``--final-seeds`` (0–4: the seeds beyond the selection's
   are trained now), measured on the test split — the first time it is read — into OUT/final.md, OUT/final.json
   and OUT/final.png, with the goal check of the default. The selection is not revisited.
3. *Learning curve* (``--lengths 5,20,60``): every design trained at each length (runs/…/epochs=E/seed=S), the
   selection stage per length into OUT/epochs=E/, and each design's chosen point against the length into
   OUT/curve.md, curve.json and curve.png; ``--final --lengths E`` reads the test split at one length.

Every run goes through run_svi.py itself (a subprocess, ``--jobs`` at a time with ``--threads`` threads each) into
OUT/runs/DESIGN[/KNOB=VALUE][/epochs=E]/seed=S, by one policy (``pyro_ncl.launcher``: finished runs are skipped,
a killed run is resumed from its checkpoint, a folder holding another run's settings is refused), so the script
resumes; each is measured in a subprocess (``python -m pyro_ncl.measure``). Flags after ``--`` go to every run.
The protocol is the library's: designs and their plan (``pyro_ncl.designs``), the comparison and the selection rule
(``pyro_ncl.frontier``), the pages (``pyro_ncl.frontier_report``); this script parses and runs them.
"""
import sys

from pyro_ncl.commands.frontier import cli

if __name__ == "__main__":
    sys.exit(cli())
