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
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import fields
from pathlib import Path
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pyro_ncl.config import BOOKKEEPING, Config, METHODS  # noqa: E402
from pyro_ncl.cli import run_script, OneLineParser  # noqa: E402
from pyro_ncl.run_folder import read_run_config  # noqa: E402
from pyro_ncl.aggregate import fmt_mean_std, mean_std  # noqa: E402
from pyro_ncl.evaluation import RUN_METRICS  # noqa: E402
from pyro_ncl.run_folder import read_metrics  # noqa: E402
from pyro_ncl.tensorboard import link_runs, run_dir_name  # noqa: E402

# every run's end-of-run metrics, then experiments/evaluate.py's
METRICS = [*RUN_METRICS, "retrieval_p1", "effective_rank", "orthogonality", "entropy_freq"]
PARTS = ("prior", "guide", "likelihood", "non_neg")
DEFAULTS = {f.name: f.default for f in fields(Config)}
IGNORED = {"seed", "method", *PARTS, *BOOKKEEPING}


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (config.json + metrics.json)")
    p.add_argument("--out", default="runs/compare", help="output folder (default: runs/compare)")
    p.add_argument("--metrics", default=",".join(METRICS), help="comma-separated metric names to tabulate")
    return p


def read_run(run_dir: Path) -> Optional[dict]:
    """{"path", "config", "metrics", "evaluated"}, or None (with a warning) for a folder that is not a finished
    run: no config.json, or no metrics.json of its own (an eval/ folder alone does not make a run finished). A
    metrics file that does not parse is a ValueError naming it."""
    try:
        config = read_run_config(run_dir)
    except ValueError as err:
        print(f"warning: skipping {run_dir}: {err}", file=sys.stderr)
        return None
    if not (run_dir / "metrics.json").is_file():
        print(f"warning: skipping {run_dir}: no metrics.json (unfinished run?)", file=sys.stderr)
        return None
    metrics: Dict = {}
    for path in (run_dir / "metrics.json", run_dir / "eval" / "metrics.json"):
        if path.is_file():
            metrics.update(read_metrics(path))
    return {"path": run_dir, "config": config, "metrics": metrics,
            "evaluated": (run_dir / "eval" / "metrics.json").exists()}


def group_labels(runs: List[dict]) -> List[str]:
    """A label per run: the method, its parts that differ from the method's defaults, and the other settings that
    vary among the runs of that (method, parts) and differ from the Config default (labels stay distinct)."""
    bases = []
    for run in runs:
        c = run["config"]
        defaults = METHODS.get(c["method"], {})
        parts = [f"{k}={c[k]}" for k in PARTS if c.get(k) is not None and c.get(k) != defaults.get(k)]
        bases.append(" ".join([c["method"], *parts]))
    labels = []
    for base, run in zip(bases, runs):
        peers = [r["config"] for b, r in zip(bases, runs) if b == base]
        varying = sorted(k for k in run["config"] if k not in IGNORED and run["config"][k] != DEFAULTS.get(k)
                         and len({json.dumps(p.get(k)) for p in peers}) > 1)
        labels.append(" ".join([base, *(f"{k}={run['config'][k]}" for k in varying)]))
    return labels


def metric_stats(values: List[Optional[float]]) -> Dict[str, float]:
    """{n, mean, std} over the runs' finite values (``pyro_ncl.aggregate.mean_std``; NaN and missing left out), and
    the digits to print (1 for integer counts)."""
    mean, std, n = mean_std(values)
    finite = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return {"n": n, "mean": mean, "std": std, "digits": 1 if finite and all(isinstance(v, int) for v in finite) else 3}


def cell(stat: Dict[str, float]) -> str:
    digits = 1 if stat["n"] and abs(stat["mean"]) >= 10 else stat["digits"]
    return fmt_mean_std(stat["mean"], stat["std"], stat["n"], digits, count=True)


def table(groups: Dict[str, List[dict]], metrics: List[str]) -> Dict[str, Dict[str, Dict[str, float]]]:
    return {label: {m: metric_stats([r["metrics"].get(m) for r in runs]) for m in metrics}
            for label, runs in groups.items()}


def write_markdown(stats, groups, metrics: List[str], path: Path) -> None:
    lines = ["| group | runs | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    for label, row in stats.items():
        lines.append(f"| {label} | {len(groups[label])} | " + " | ".join(cell(row[m]) for m in metrics) + " |")
    lines += ["", "mean ± std over runs (n runs with the metric); std is the sample standard deviation. Runs marked "
              "eval/ contribute the values of experiments/evaluate.py (its settings may differ from the run's own).",
              "", "Runs:", ""]
    for label, runs in groups.items():
        lines.append(f"- {label}: " + ", ".join(f"{r['path']} (seed {r['config'].get('seed')}"
                                                 f"{', eval/' if r['evaluated'] else ''})" for r in runs))
    path.write_text("\n".join(lines) + "\n")


def plot_bars(stats, metrics: List[str], path: Path) -> None:
    metrics = [m for m in metrics if any(row[m]["n"] for row in stats.values())]
    labels = list(stats)
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 0.5 + (1.2 + 0.35 * len(labels)) * rows), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        means = [stats[g][m].get("mean", float("nan")) for g in labels]
        stds = [stats[g][m].get("std", 0.0) for g in labels]
        ax.barh(range(len(labels)), means, xerr=stds, color=[f"C{i % 10}" for i in range(len(labels))], capsize=3)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(m, fontsize=9)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def tensorboard_runs(groups: Dict[str, List[dict]]) -> Dict[str, Path]:
    """{"<group>/seed<s>": run folder} (``_2``, ``_3``... for runs of a group with the same seed)."""
    names: Dict[str, Path] = {}
    for label, runs in groups.items():
        for run in runs:
            name, copy = f"{run_dir_name(label)}/seed{run['config'].get('seed')}", 1
            while (f"{name}_{copy}" if copy > 1 else name) in names:
                copy += 1
            names[f"{name}_{copy}" if copy > 1 else name] = run["path"]
    return names


def main(args) -> Dict:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; expected a folder for comparison.md and comparison.png")
    runs = [r for r in (read_run(Path(d)) for d in args.runs) if r is not None]
    if not runs:
        raise ValueError("none of the given folders holds a finished run (config.json + metrics.json)")
    groups: Dict[str, List[dict]] = {}
    for label, run in zip(group_labels(runs), runs):
        groups.setdefault(label, []).append(run)
    wanted = [m.strip() for m in args.metrics.split(",") if m.strip()]
    metrics = [m for m in wanted if any(m in r["metrics"] for r in runs)]
    if not metrics:
        raise ValueError(f"no run has any of the metrics {', '.join(wanted)}")
    stats = table(groups, metrics)
    out.mkdir(parents=True, exist_ok=True)
    write_markdown(stats, groups, metrics, out / "comparison.md")
    plot_bars(stats, metrics, out / "comparison.png")
    print((out / "comparison.md").read_text())
    if link_runs(out / "tensorboard", tensorboard_runs(groups)):
        print(f"TensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    return stats


def cli(argv=None):
    """Parse, run; bad input as one line and exit status 2 (``pyro_ncl.cli.run_script``)."""
    return run_script(main, parser(), argv)
