"""Time the default run against ``--method ncl``, back to back on this machine, and optionally the test suite.

    python experiments/timing.py --out runs/timing --record docs/results/timing.md     # full Fashion-MNIST, 5 epochs
    python experiments/timing.py --out runs/timing --suite                             # also the test suite
    python experiments/timing.py --out runs/t -- --subset 1024 --epochs 1              # flags after -- go to both runs

Each run is ``experiments/run_svi.py`` in a subprocess (``--overwrite`` in OUT/bayesncl and OUT/ncl); the table gives
its wall time and the training and evaluation seconds it records in metrics.json, and the default's training time
over NCL's (the issue's goal: at most 1.10). Time on a quiet machine: other work on the cores changes the ratio.
``--record PAGE`` appends the table to a results page as a dated entry with the command, commit and CPU.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import List

from pyro_ncl.cli import OneLineParser, exit_on_bad_input, parse_launcher_args
from pyro_ncl.launcher import RUN_SVI, last_line
from pyro_ncl.progress import format_duration
from pyro_ncl.results_page import append_entry
from pyro_ncl.run_folder import read_metrics

RUNS = {"bayesncl": [], "ncl": ["--method", "ncl"]}  # the default, then NCL


def timed(command: List[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ValueError(f"{' '.join(command[1:3])} failed: {last_line(result)}")
    return time.perf_counter() - start


def main(args) -> dict:
    out = Path(args.out)
    rows = {}
    for name, flags in RUNS.items():
        wall = timed([sys.executable, str(RUN_SVI), *flags, *args.run_args, "--out", str(out / name),
                      "--overwrite", "--quiet"])
        metrics = read_metrics(out / name / "metrics.json")
        rows[name] = {"wall": wall, "train": metrics["train_seconds"], "eval": metrics["eval_seconds"],
                      "knn": metrics.get("knn_accuracy"), "consistency": metrics.get("semantic_consistency")}
        print(f"{name}: {format_duration(wall)} wall, {metrics['train_seconds']:.0f} s training", flush=True)
    ratio = rows["bayesncl"]["train"] / rows["ncl"]["train"]
    lines = ["| run | wall | training | evaluation | kNN | consistency |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {format_duration(r['wall'])} | {r['train']:.0f} s | {r['eval']:.0f} s | {r['knn']:.3f} | "
              f"{r['consistency']:.3f} |" for name, r in rows.items()]
    lines += ["", f"The default trains {ratio:.2f}× as long as NCL (target ≤ 1.10)."]
    if args.suite:
        suite = timed([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"])
        lines.append(f"Test suite (`python -m pytest -q`): {format_duration(suite)}.")
    print("\n".join(lines))
    if args.record:
        append_entry(Path(args.record), "the default run against NCL, back to back" + (" ; test suite" if args.suite
                                                                                       else ""), lines)
    return {"rows": rows, "ratio": ratio}


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder of the two runs")
    p.add_argument("--suite", action="store_true", help="also time the test suite")
    p.add_argument("--record", default=None, metavar="PAGE.md", help="append a dated entry to this results page")
    return p


def cli(argv=None):
    """Flags before ``--`` for the timing, after it for both runs."""
    return exit_on_bad_input(main, parse_launcher_args(parser(), argv))
