"""A grid of run_svi.py runs and its table (``experiments/sweep.py``): each ``--grid KEY=V1,V2`` is an axis (a Config
field; ``KEY1+KEY2=A+B,C+D`` varies fields together), the runs are the Cartesian product, flags after ``--`` go to
every run. Every point's settings (and every reference run) are checked before the first run; each point is run,
resumed or skipped by the launcher's one policy (``pyro_ncl.launcher``: a folder holding a run with other settings
is refused, so an earlier result is never overwritten); two sweeps sharing --out never run a point at once (the run
folder's lock). Writes ``results.csv``, ``results.md`` and ``sweep.png`` to --out."""
from __future__ import annotations

import csv
import itertools
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pyro_ncl.cli import (OneLineParser, build_parser, config_from_args, exit_on_bad_input,  # noqa: E402
                          parse_launcher_args)
from pyro_ncl.config import FIELD_NAMES, Config  # noqa: E402
from pyro_ncl.evaluation import RUN_METRICS  # noqa: E402
from pyro_ncl.launcher import launch  # noqa: E402
from pyro_ncl.run_folder import config_from_run, read_metrics  # noqa: E402
from pyro_ncl.system import check_parts  # noqa: E402
from pyro_ncl.tensorboard import EVENT_FILES, link_runs, run_dir_name  # noqa: E402

COLUMNS = [*RUN_METRICS, "seconds_per_epoch"]
SET_BY_SWEEP = ("out", "overwrite", "resume")  # flags after -- may not set them


def parse_axis(text: str) -> List[Dict[str, str]]:
    """'a+b=1+2,3+4' → [{'a': '1', 'b': '2'}, {'a': '3', 'b': '4'}]."""
    if "=" not in text:
        raise ValueError(f"--grid {text!r}: expected KEY=V1,V2 (or KEY1+KEY2=A+B,C+D)")
    keys, values = text.split("=", 1)
    keys = keys.split("+")
    for key in keys:
        if key not in FIELD_NAMES:
            raise ValueError(f"--grid {text!r}: {key!r} is not a setting of run_svi.py")
    points = []
    for value in values.split(","):
        parts = value.split("+")
        if len(parts) != len(keys):
            raise ValueError(f"--grid {text!r}: {value!r} has {len(parts)} values for {len(keys)} keys")
        points.append(dict(zip(keys, parts)))
    return points


def grid_points(axes: List[str]) -> List[Dict[str, str]]:
    return [dict(kv for point in combo for kv in point.items())
            for combo in itertools.product(*(parse_axis(axis) for axis in axes))]


def point_name(point: Dict[str, str]) -> str:
    return "_".join(f"{k}={v}" for k, v in point.items()) or "base"


def point_flags(point: Dict[str, str]) -> List[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in point.items()]


def point_config(point: Dict[str, str], extra: List[str], run_dir: Path) -> Config:
    """The settings run_svi.py will use for this point, checked as it checks them (a one-line ValueError)."""
    parser = build_parser()
    parser.raise_errors = True
    try:
        args = parser.parse_args([*extra, *point_flags(point), "--out", str(run_dir)])
        config = config_from_args(args).resolved().validate()
        check_parts(config)
    except ValueError as err:
        raise ValueError(f"point {point_name(point)}: {err}") from None
    return config


def run_point(point: Dict[str, str], run_dir: Path, extra: List[str], config: Config) -> Tuple[bool, str]:
    """Run, resume or skip one point by the launcher's policy (``pyro_ncl.launcher``: a folder holding a run with
    other settings is refused, not overwritten); (succeeded, what happened)."""
    try:
        return True, launch(run_dir, [*extra, *point_flags(point)], config.to_dict())
    except (ValueError, RuntimeError) as err:
        return False, str(err)


def result_row(run_dir: Path, point: Dict[str, str]) -> Dict[str, object]:
    """A table row from a finished run (a one-line ValueError naming the folder when it is not one)."""
    if not (run_dir / "metrics.json").is_file():
        raise ValueError(f"{run_dir} holds no finished run (no metrics.json)")
    metrics = read_metrics(run_dir / "metrics.json")
    config = config_from_run(run_dir, unknown="warn")
    row: Dict[str, object] = {"run": run_dir.name, **point}
    row.update({k: metrics.get(k, "") for k in COLUMNS if k != "seconds_per_epoch"})
    row["seconds_per_epoch"] = metrics.get("train_seconds", float("nan")) / max(1, config.epochs)
    return row


def write_table(rows: List[Dict[str, object]], keys: List[str], out: Path) -> None:
    fields = ["run", *keys, *COLUMNS]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(fmt(row.get(k, "")) for k in fields) + " |" for row in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def plot(rows: List[Dict[str, object]], out: Path, x_key: str = "linear_probe_backbone") -> None:
    fig, ax = plt.subplots(figsize=(7, 5))
    for row in rows:
        marker, size = ("*", 220) if row["run"].startswith("reference:") else ("o", 50)
        ax.scatter(row[x_key], row["semantic_consistency"], marker=marker, s=size)
        ax.annotate(row["run"].replace("reference:", ""), (row[x_key], row["semantic_consistency"]), fontsize=6)
    ax.set(xlabel=x_key.replace("_", " "), ylabel="semantic consistency (test)",
           title="where does the gate raise consistency at equal accuracy?")
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=120)
    plt.close(fig)


def run_sweep(args) -> List[Dict[str, object]]:
    """``args``: out, grid (axes), reference (run folders), run_args (flags for every run). Check every point and
    reference, run the points, tabulate; ValueError for bad input, SystemExit(1) when a point failed (after the
    table of the others is written)."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; expected a folder for the sweep")
    taken = [flag for flag in args.run_args for key in SET_BY_SWEEP
             if flag.split("=")[0] in (f"--{key}", f"--no-{key}")]
    if taken:
        raise ValueError(f"the sweep sets --out and --overwrite of each run itself; drop {', '.join(taken)} after --")
    points = grid_points(args.grid)
    configs = [point_config(point, args.run_args, out / point_name(point)) for point in points]
    references = [result_row(Path(r), {}) | {"run": f"reference:{Path(r).name}"} for r in args.reference]
    out.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for p in points for k in p))
    rows, failed = [], []
    for i, (point, config) in enumerate(zip(points, configs), 1):
        run_dir = out / point_name(point)
        ok, message = run_point(point, run_dir, args.run_args, config)
        print(f"[{i}/{len(points)}] {point_name(point)}: {'ok' if ok else 'FAILED'} {message}".rstrip(), flush=True)
        if ok:
            rows.append(result_row(run_dir, point))
        else:
            failed.append(point_name(point))
    rows += references
    write_table(rows, keys, out)
    if rows:
        plot(rows, out)
    print((out / "results.md").read_text())
    link_runs(out / "references", {run_dir_name(Path(r).name): Path(r) for r in args.reference})
    if any(out.glob(f"*/{EVENT_FILES}")):
        print(f"TensorBoard: tensorboard --logdir {out}")
    if failed:
        print(f"error: {len(failed)} of {len(points)} points failed: {', '.join(failed)}", file=sys.stderr)
        raise SystemExit(1)
    return rows


def parser() -> OneLineParser:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder of the sweep (one subfolder per run)")
    p.add_argument("--grid", action="append", default=[], help="an axis KEY=V1,V2 (repeatable)")
    p.add_argument("--reference", action="append", default=[], help="finished run folders to add to the table")
    return p


def cli(argv=None):
    """``experiments/sweep.py``'s command line: flags before ``--`` for the sweep, after it for every run."""
    return exit_on_bad_input(run_sweep, parse_launcher_args(parser(), argv))
