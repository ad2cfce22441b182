#!/usr/bin/env python
"""The consistency–accuracy front: gate designs × their sparsity knob × seeds, against NCL and NCL sparsified after
training, every run measured on the very features it is scored on.

    python experiments/frontier.py --out runs/frontier -- --subset 10000 --epochs 5
    python experiments/frontier.py --out runs/frontier --designs ncl,value --seeds 0,1,2 --jobs 2 -- --epochs 5
    python experiments/frontier.py --out runs/frontier --summary-only      # tables and plot from what is there

Designs come from ``--designs-file`` (default experiments/frontier_designs.yaml): per design, the run_svi.py
settings of a method and its parts (``flags``), the sparsity knob swept (``knob``: one setting and its values) and
``posthoc: true`` for the features sparsified after training (``pyro_ncl.posthoc``). Flags after ``--`` go to every
run. Every run goes through run_svi.py itself (a subprocess, ``--jobs`` at a time with ``--threads`` threads each)
into OUT/runs/DESIGN[/KNOB=VALUE]/seed=S; then ``frontier.py --measure RUN_DIR`` scores each of its feature
variants (``pyro_ncl.frontier``) into RUN_DIR/frontier.json. Finished runs and measurements are skipped (a run
folder holding another run's settings is refused), and a killed run is resumed from its checkpoint, so the
script resumes. Writes OUT/frontier.json (every run's rows and the points: mean ± std over seeds), OUT/frontier.md
(the table, Pareto-optimal points marked ★, and the goal check against NCL and NCL with a threshold) and
OUT/frontier.png (consistency against kNN, one curve per design, error bars: std over seeds).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import yaml

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pyro_ncl.config import (BOOKKEEPING, FIELD_NAMES, Config, build_parser, config_from_args,  # noqa: E402
                             changed_settings, read_run_config)
from pyro_ncl.frontier import METRICS, goal_check, measure_features, summarise, variants  # noqa: E402

HERE = Path(__file__).resolve().parent
RUN_SVI = HERE / "run_svi.py"
DESIGNS_FILE = HERE / "frontier_designs.yaml"
MEASURE_VERSION = 1  # bump when what ``measure`` writes changes: older frontier.json files are measured again
COLUMNS = [("knn_accuracy", "kNN"), ("linear_probe_features", "linear (features)"),
           ("linear_probe_backbone", "linear (h)"), ("semantic_consistency", "consistency"),
           ("sparsity", "sparsity"), ("active_dims", "active dims"), ("active_per_image", "active / image"),
           ("selective_dims", "selective dims"), ("open_gates_per_image", "open gates / image"),
           ("gate_entropy", "gate entropy"), ("closed_active", "closed active"),
           ("selective_gates", "selective gates")]


# ---------------------------------------------------------------- designs and runs
def load_designs(path: Path, names: Optional[List[str]] = None) -> Dict[str, dict]:
    """``{design: {"flags": {...}, "knob": (key, [values]) or None, "posthoc": bool}}`` from the YAML file, in
    file order, only ``names`` when given; one-line errors for anything malformed."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"--designs-file {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"--designs-file {path}: expected a mapping of design names, got {type(raw).__name__}")
    designs = {}
    for name, spec in raw.items():
        spec = spec or {}
        unknown = set(spec) - {"flags", "knob", "posthoc", "description"}
        if unknown:
            raise ValueError(f"--designs-file {path}: design {name!r} has unknown keys {', '.join(sorted(unknown))}")
        flags = spec.get("flags") or {}
        knob = spec.get("knob")
        if knob is not None and (not isinstance(knob, dict) or len(knob) != 1
                                 or not isinstance(next(iter(knob.values())), list)):
            raise ValueError(f"--designs-file {path}: design {name!r}: knob must be one setting and a list of values")
        for key in [*flags, *(knob or {})]:
            if key not in FIELD_NAMES or key in BOOKKEEPING or key == "seed":
                raise ValueError(f"--designs-file {path}: design {name!r}: {key!r} is not a method setting of "
                                 f"run_svi.py")
        designs[name] = {"flags": flags, "knob": next(iter(knob.items())) if knob else None,
                         "posthoc": bool(spec.get("posthoc", False))}
    if names:
        missing = [n for n in names if n not in designs]
        if missing:
            raise ValueError(f"--designs {', '.join(missing)}: not in {path} (known: {', '.join(designs)})")
        designs = {n: designs[n] for n in names}
    return designs


def plan(designs: Dict[str, dict], seeds: List[int], out: Path) -> List[dict]:
    """One job per design × knob value × seed: its folder, run_svi flags and labels; ordered seed by seed, and
    within a seed knob position by knob position across the designs (every design gets its first runs early)."""
    jobs = []
    for name, design in designs.items():
        key, values = design["knob"] or (None, [None])
        for position, value in enumerate(values):
            for seed in seeds:
                settings = dict(design["flags"], **({key: value} if key else {}), seed=seed)
                folder = out / "runs" / name / (f"{key}={value}" if key else "") / f"seed={seed}"
                jobs.append({"design": name, "knob": value, "knob_key": key, "seed": seed, "dir": folder,
                             "settings": settings, "posthoc": design["posthoc"], "order": (seeds.index(seed),
                                                                                          position)})
    return sorted(jobs, key=lambda job: job["order"])


def _flags(settings: dict) -> List[str]:
    out = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out.append(f"{flag}={value}")
    return out


def requested_config(settings: dict, run_args: List[str]) -> dict:
    """The resolved settings run_svi.py will run with (what the run's config.json must hold)."""
    args = build_parser().parse_args([*run_args, *_flags(settings)])
    return config_from_args(args).resolved().to_dict()


def settings_differ(run_dir: Path, wanted: dict) -> List[str]:
    """``key: saved → wanted`` for each method setting where the run folder's config.json differs (a setting it
    lacks, written by an older version, counts as that setting's default)."""
    saved = read_run_config(run_dir)
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    return [f"{k}: {saved.get(k, defaults.get(k))!r} → {wanted[k]!r}" for k in changed_settings(saved, wanted)]


def _env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


def _last_line(result: subprocess.CompletedProcess) -> str:
    return (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or [""])[-1]


def run_job(job: dict, run_args: List[str], threads: int, device: str) -> str:
    """Train (or resume, or skip) the job's run, then measure it (or skip); returns a status line."""
    run_dir: Path = job["dir"]
    wanted = requested_config(job["settings"], run_args)
    status = []
    if (run_dir / "config.json").exists():
        differ = settings_differ(run_dir, wanted)
        if differ:
            raise ValueError(f"{run_dir} holds a run with other settings ({'; '.join(differ[:3])}); remove it or "
                             f"choose another --out")
    if not (run_dir / "metrics.json").exists():
        if (run_dir / "checkpoint.pt").exists() or (run_dir / "checkpoint.prev.pt").exists():
            cmd, status = [sys.executable, str(RUN_SVI), "--resume", str(run_dir)], ["resumed"]
        else:
            cmd = [sys.executable, str(RUN_SVI), *run_args, *_flags(job["settings"]), "--out", str(run_dir),
                   "--overwrite"]
            status = ["trained"]
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True, env=_env(threads))
        if result.returncode != 0:
            raise RuntimeError(f"run_svi failed in {run_dir}: {_last_line(result)}")
        status[-1] += f" in {time.perf_counter() - start:.0f} s"
    measured = run_dir / "frontier.json"
    if not _measured(measured, job["posthoc"]):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", str(run_dir), "--device", device]
        result = subprocess.run(cmd + (["--posthoc"] if job["posthoc"] else []), capture_output=True, text=True,
                                env=_env(threads))
        if result.returncode != 0:
            raise RuntimeError(f"measuring {run_dir} failed: {_last_line(result)}")
        status.append("measured")
    return ", ".join(status) or "done before"


def _measured(path: Path, posthoc: bool) -> bool:
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return saved.get("version") == MEASURE_VERSION and saved.get("posthoc") == posthoc


# ---------------------------------------------------------------- measuring one run (a subprocess)
def measure(run_dir: Path, posthoc: bool, device: str) -> List[dict]:
    """Every feature variant of a finished run, scored with its own settings (probe epochs, kNN k, seed, and
    evaluation subset); writes RUN_DIR/frontier.json and returns its rows."""
    from pyro_ncl.evaluation import extract
    from pyro_ncl.inspect import load_run
    from pyro_ncl.probes import linear_probe
    from pyro_ncl.train import resolve_device

    device = resolve_device(device)
    run = load_run(run_dir, device=device)
    c = run.config
    train, test = (extract(run.system, run.data, split, c.eval_batch_size, device, c.eval_subset)
                   for split in ("train", "test"))
    probe_h = linear_probe(train["h"], train["y"], test["h"], test["y"], run.data.num_classes,
                           epochs=c.probe_epochs, seed=c.seed, device=device)
    rows = []
    for variant, param, tr, te in variants(train, test, posthoc):
        scores = measure_features(tr, te, run.data.num_classes, probe_epochs=c.probe_epochs, knn_k=c.knn_k,
                                  seed=c.seed, device=device)
        rows.append({"variant": variant, "param": param, "linear_probe_backbone": probe_h, **scores})
    record = {"version": MEASURE_VERSION, "posthoc": posthoc, "seed": c.seed, "rows": rows}
    tmp = run_dir / "frontier.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, run_dir / "frontier.json")
    return rows


# ---------------------------------------------------------------- the summary
def collect(jobs: List[dict]) -> List[dict]:
    """Every measured run's rows, labelled with its design, knob value and seed."""
    rows = []
    for job in jobs:
        path = job["dir"] / "frontier.json"
        if not _measured(path, job["posthoc"]):
            continue
        measured = json.loads(path.read_text())["rows"]
        for row in drop_repeated_mean(measured):
            rows.append({"design": job["design"], "knob_key": job["knob_key"], "knob": job["knob"],
                         "seed": job["seed"], **row})
    return rows


def drop_repeated_mean(rows: List[dict]) -> List[dict]:
    """A run's rows without a ``mean`` row that equals its ``mode`` row in every metric: the same features (a
    point-mass posterior, e.g. top-k, whose mean is its mode; such runs measured today have no ``mean`` row)."""
    def scores(row: dict) -> dict:
        return {k: v for k, v in row.items() if k != "variant"}

    modes = [scores(r) for r in rows if r["variant"] == "mode"]
    return [r for r in rows if not (r["variant"] == "mean" and scores(r) in modes)]


def _fmt(point: dict, metric: str) -> str:
    mean, std, n = point[metric], point[f"{metric}_std"], point[f"{metric}_n"]
    if n == 0 or not math.isfinite(mean):
        return "–"
    digits = 1 if metric in ("active_dims", "active_per_image", "open_gates_per_image") else 3
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def point_label(point: dict, knob_keys: Dict[str, str]) -> str:
    parts = []
    if point["knob"] is not None:
        parts.append(f"{knob_keys.get(point['design'], 'knob')}={point['knob']}")
    if point["param"] is not None:
        parts.append({"threshold": "q", "top-k": "k", "rate-cap": "r"}.get(point["variant"], "p")
                     + f"={point['param']}")
    return ", ".join(parts)


def write_markdown(points: List[dict], checks: List[dict], knob_keys: Dict[str, str], path: Path,
                   header: str) -> None:
    lines = [header, "", "Mean ± std over seeds; ★ = Pareto-optimal in (kNN, consistency) among all points.", "",
             "| curve | setting | seeds | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(COLUMNS)]
    for p in points:
        star = " ★" if p["pareto"] else ""
        lines.append(f"| {p['curve']}{star} | {point_label(p, knob_keys)} | {len(p['seeds'])} | "
                     + " | ".join(_fmt(p, metric) for metric, _ in COLUMNS) + " |")
    if checks:
        target = checks[0]["target"]
        lines += ["", f"## Goal check (target consistency {target:.3f} = NCL + ½(1 − NCL), at kNN and linear (h) "
                      f"within 1 point of NCL's)", "",
                  "Each curve's most consistent point within 1 point of NCL's kNN and linear probe on h, against "
                  "NCL sparsified after training at the same kNN (the post-hoc front, interpolated).", "",
                  "| curve | best point | kNN | consistency | NCL+threshold at its kNN | NCL+top-k at its kNN | "
                  "meets target | beats threshold | beats top-k |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for check in checks:
            best = check["best"]
            if best is None:
                lines.append(f"| {check['curve']} | no point within 1 point of NCL's kNN and linear (h) "
                             f"| – | – | – | – | no | – | – |")
                continue
            bars = [f"{check[k]:.3f}" if check[k] is not None else "–" for k in ("threshold", "top_k")]
            flags = ["yes" if check[k] else "no" for k in ("meets_target", "beats_threshold", "beats_top_k")]
            lines.append(f"| {check['curve']} | {point_label(best, knob_keys)} | {_fmt(best, 'knn_accuracy')} | "
                         f"{_fmt(best, 'semantic_consistency')} | {' | '.join(bars)} | {' | '.join(flags)} |")
    path.write_text("\n".join(lines) + "\n")


def plot(points: List[dict], checks: List[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 6.5))
    curves = list(dict.fromkeys(p["curve"] for p in points))
    for curve in curves:
        members = [p for p in points if p["curve"] == curve and math.isfinite(p["knn_accuracy"])]
        members.sort(key=lambda p: p["knn_accuracy"])
        if not members:
            continue
        style = dict(marker="*", markersize=14, linestyle="none") if len(members) == 1 else dict(marker="o")
        ax.errorbar([p["knn_accuracy"] for p in members], [p["semantic_consistency"] for p in members],
                    xerr=[p["knn_accuracy_std"] for p in members],
                    yerr=[p["semantic_consistency_std"] for p in members], capsize=2, label=curve, **style)
    if checks:
        ax.axhline(checks[0]["target"], color="grey", linestyle="--", linewidth=1, label="goal: NCL + ½(1 − NCL)")
    ref = next((p for p in points if p["curve"] == "ncl"), None)
    if ref is not None:
        ax.axvspan(ref["knn_accuracy"] - 0.01, ax.get_xlim()[1], color="grey", alpha=0.08,
                   label="kNN within 1 point of NCL")
    ax.set(xlabel="kNN accuracy on the evaluated features (test)", ylabel="semantic consistency (test)",
           title="consistency–accuracy front (mean ± std over seeds)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def summary(jobs: List[dict], out: Path, header: str) -> List[dict]:
    rows = collect(jobs)
    points = summarise(rows)
    order = {name: i for i, name in enumerate(dict.fromkeys(j["design"] for j in jobs))}
    points.sort(key=lambda p: (order.get(p["design"], 0), p["variant"], _sort_key(p["knob"]),
                               _sort_key(p["param"])))
    knob_keys = {j["design"]: j["knob_key"] for j in jobs if j["knob_key"]}
    checks = goal_check(points)
    (out / "frontier.json").write_text(json.dumps({"rows": rows, "points": points}, indent=1, default=str))
    write_markdown(points, checks, knob_keys, out / "frontier.md", header)
    if points:
        plot(points, checks, out / "frontier.png")
    return points


def _sort_key(value):
    return (0, float(value)) if isinstance(value, (int, float)) else (1, str(value))


# ---------------------------------------------------------------- main
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="folder of the frontier (runs/ holds one folder per run)")
    p.add_argument("--designs", default=None, help="comma-separated designs to run (default: all in the file)")
    p.add_argument("--designs-file", default=str(DESIGNS_FILE), help="YAML of designs (default: %(default)s)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default: 2)")
    p.add_argument("--threads", type=int, default=1, help="threads per run (default: 1)")
    p.add_argument("--device", default="cpu", help="device of the measurement (default: cpu; training: the runs' "
                                                   "--device, auto by default)")
    p.add_argument("--summary-only", action="store_true", help="only tabulate and plot what is measured")
    p.add_argument("--measure", default=None, metavar="RUN_DIR", help=argparse.SUPPRESS)
    p.add_argument("--posthoc", action="store_true", help=argparse.SUPPRESS)
    return p


def main(args, run_args: List[str]) -> List[dict]:
    if args.measure:
        return measure(Path(args.measure), args.posthoc, args.device)
    if not args.out:
        raise ValueError("--out is required (the frontier's folder)")
    if args.jobs < 1 or args.threads < 1:
        raise ValueError(f"--jobs and --threads must be at least 1, got {args.jobs} and {args.threads}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if not seeds:
        raise ValueError("--seeds is empty")
    designs = load_designs(Path(args.designs_file), args.designs.split(",") if args.designs else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = plan(designs, seeds, out)
    for job in jobs:  # bad settings are refused before anything runs
        requested_config(job["settings"], run_args)
    header = (f"# Consistency–accuracy front\n\nCommand: `python experiments/frontier.py {' '.join(sys.argv[1:])}`"
              if not args.summary_only else "# Consistency–accuracy front")
    failures = []
    if not args.summary_only:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(run_job, job, run_args, args.threads, args.device): job for job in jobs}
            for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
                job = futures[future]
                try:
                    message = future.result()
                except (ValueError, RuntimeError) as err:
                    failures.append(str(err))
                    message = f"FAILED: {err}"
                print(f"[{i}/{len(jobs)}] {job['dir'].relative_to(out)}: {message}", flush=True)
    points = summary(jobs, out, header)
    print((out / "frontier.md").read_text())
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(jobs)} runs failed; the first: {failures[0]}")
    return points


def cli(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    args = parser().parse_args(argv)
    try:
        main(args, run_args)
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
