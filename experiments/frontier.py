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

Every run goes through run_svi.py itself (a subprocess, ``--jobs`` at a time with ``--threads`` threads each) into
OUT/runs/DESIGN[/KNOB=VALUE]/seed=S. Finished runs and measurements are skipped, a killed run is resumed from its
checkpoint and a folder holding another run's settings is refused, so the script resumes. Flags after ``--`` go to
every run.
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

from pyro_ncl.backends import cpu_model  # noqa: E402
from pyro_ncl.config import (BOOKKEEPING, FIELD_NAMES, Config, build_parser, changed_settings,  # noqa: E402
                             check_setting, config_from_args, read_run_config)
from pyro_ncl.frontier import (baselines, measure_features, paired_margins, point_key, select,  # noqa: E402
                               summarise, target_consistency, variants)

HERE = Path(__file__).resolve().parent
RUN_SVI = HERE / "run_svi.py"
DESIGNS_FILE = HERE / "frontier_designs.yaml"
MEASURE_VERSION = 3  # bump when what ``measure`` writes changes: older frontier.json files are measured again
REFERENCE, TRAINED = "ncl", "ncl_topk"
COLUMNS = [("knn_accuracy", "kNN"), ("linear_probe_features", "linear (features)"),
           ("linear_probe_backbone", "linear (h)"), ("semantic_consistency", "consistency"),
           ("weighted_consistency", "weighted cons."), ("active_dims", "active dims"),
           ("active_per_image", "active / image"), ("open_gates_per_image", "open gates / image"),
           ("posterior_entropy", "entropy / image"), ("uncertain_images", "uncertain images"),
           ("closed_active", "closed active"), ("background_leakage", "leakage")]
MARGINS = [("threshold", "NCL+threshold"), ("top_k", "NCL+top-k"), ("posthoc", "all post-hoc"),
           ("trained_top_k", "ncl_topk")]


# ---------------------------------------------------------------- designs and runs
def load_designs(path: Path, names: Optional[List[str]] = None) -> Dict[str, dict]:
    """``{design: {"flags": {...}, "knob": (key, [values]) or None, "posthoc": bool, "candidate": bool}}`` from the
    YAML file, in file order, only ``names`` when given; one-line errors for anything malformed."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"--designs-file {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"--designs-file {path}: expected a mapping of design names, got {type(raw).__name__}")
    designs = {}
    for name, spec in raw.items():
        spec = spec or {}
        unknown = set(spec) - {"flags", "knob", "posthoc", "candidate", "description"}
        if unknown:
            raise ValueError(f"--designs-file {path}: design {name!r} has unknown keys {', '.join(sorted(unknown))}")
        flags = spec.get("flags") or {}
        knob = spec.get("knob")
        if knob is not None and (not isinstance(knob, dict) or len(knob) != 1
                                 or not isinstance(next(iter(knob.values())), list)):
            raise ValueError(f"--designs-file {path}: design {name!r}: knob must be one setting and a list of values")
        for key in [*flags, *(knob or {})]:
            if key not in FIELD_NAMES or key in BOOKKEEPING or key in ("seed", "val_size"):
                raise ValueError(f"--designs-file {path}: design {name!r}: {key!r} is not a method setting of "
                                 f"run_svi.py")
        designs[name] = {"flags": flags, "knob": next(iter(knob.items())) if knob else None,
                         "posthoc": bool(spec.get("posthoc", False)), "candidate": bool(spec.get("candidate", False))}
    if names:
        missing = [n for n in names if n not in designs]
        if missing:
            raise ValueError(f"--designs {', '.join(missing)}: not in {path} (known: {', '.join(designs)})")
        designs = {n: designs[n] for n in names}
    return designs


def override_knobs(designs: Dict[str, dict], overrides: List[str]) -> Dict[str, dict]:
    """``--knob DESIGN=V1,V2`` (each once): DESIGN's knob swept over these values (checked as its setting) instead
    of the file's; one-line errors for a design not selected, one without a knob, or a bad value."""
    designs = {name: dict(design) for name, design in designs.items()}
    seen = set()
    for text in overrides:
        name, sep, values = text.partition("=")
        if not sep or not values.strip():
            raise ValueError(f"--knob must be DESIGN=V1,V2,..., got {text!r}")
        if name not in designs:
            raise ValueError(f"--knob {text}: design {name!r} is not among the designs run ({', '.join(designs)})")
        if name in seen:
            raise ValueError(f"--knob {text}: design {name!r} is given twice")
        seen.add(name)
        if designs[name]["knob"] is None:
            raise ValueError(f"--knob {text}: design {name!r} has no knob in the designs file")
        key = designs[name]["knob"][0]
        try:
            parsed = [check_setting(key, yaml.safe_load(v.strip())) for v in values.split(",")]
        except (ValueError, yaml.YAMLError) as err:
            raise ValueError(f"--knob {text}: {str(err).splitlines()[0]}") from None
        designs[name]["knob"] = (key, parsed)
    return designs


def plan(designs: Dict[str, dict], seeds: List[int], out: Path, lengths: Optional[List[int]] = None) -> List[dict]:
    """One job per design × knob value × seed (× training length, with ``lengths``): its folder, run_svi flags and
    labels; ordered length by length (shortest first), then seed by seed, and within a seed knob position by knob
    position across the designs (every design gets its first runs early)."""
    jobs = []
    for epochs in lengths or [None]:
        for name, design in designs.items():
            key, values = design["knob"] or (None, [None])
            for position, value in enumerate(values):
                for seed in seeds:
                    settings = dict(design["flags"], **({key: value} if key else {}),
                                    **({"epochs": epochs} if epochs else {}), seed=seed)
                    folder = (out / "runs" / name / (f"{key}={value}" if key else "")
                              / (f"epochs={epochs}" if epochs else "") / f"seed={seed}")
                    jobs.append({"design": name, "knob": value, "knob_key": key, "seed": seed, "epochs": epochs,
                                 "dir": folder, "settings": settings, "posthoc": design["posthoc"],
                                 "candidate": design["candidate"],
                                 "order": (epochs or 0, seeds.index(seed), position)})
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


def run_job(job: dict, run_args: List[str], threads: int, device: str, split: str) -> str:
    """Train (or resume, or skip) the job's run, then measure it on ``split`` (or skip); returns a status line."""
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
    if not _measured(run_dir / "frontier.json", job["posthoc"], split):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", str(run_dir), "--split", split,
               "--device", device]
        result = subprocess.run(cmd + (["--posthoc"] if job["posthoc"] else []), capture_output=True, text=True,
                                env=_env(threads))
        if result.returncode != 0:
            raise RuntimeError(f"measuring {run_dir} failed: {_last_line(result)}")
        status.append(f"measured on {split}")
    return ", ".join(status) or "done before"


def _record(path: Path) -> dict:
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return saved if isinstance(saved, dict) and saved.get("version") == MEASURE_VERSION else {}


def _measured(path: Path, posthoc: bool, split: str) -> bool:
    saved = _record(path)
    return saved.get("posthoc") == posthoc and split in saved.get("splits", {})


# ---------------------------------------------------------------- measuring one run (a subprocess)
def measure(run_dir: Path, posthoc: bool, device: str, split: str) -> List[dict]:
    """Every feature variant of a finished run on ``split`` ("val" or "test"), scored with its own settings (probe
    epochs, kNN k, seed, evaluation subset) against the training split; stored under ``splits[split]`` of
    RUN_DIR/frontier.json (the other split's rows are kept); returns the rows."""
    from pyro_ncl.evaluation import extract
    from pyro_ncl.trained_run import load_run
    from pyro_ncl.probes import linear_probe
    from pyro_ncl.train import resolve_device

    device = resolve_device(device)
    run = load_run(run_dir, device=device)
    c = run.config
    if split == "val" and run.data.val is None:
        raise ValueError(f"{run_dir} has no validation split (it was trained without --val-size)")
    parts = {}
    for name in ("train", split):
        parts[name] = extract(run.system, run.data, name, c.eval_batch_size, device, c.eval_subset)
        if hasattr(run.data, "background"):
            parts[name]["background"] = run.data.background(name)[:len(parts[name]["y"])]
    train, scored = parts["train"], parts[split]
    probe_h = linear_probe(train["h"], train["y"], scored["h"], scored["y"], run.data.num_classes,
                           epochs=c.probe_epochs, seed=c.seed, device=device)
    rows = []
    for variant, param, tr, te in variants(train, scored, posthoc):
        scores = measure_features(tr, te, run.data.num_classes, probe_epochs=c.probe_epochs, knn_k=c.knn_k,
                                  seed=c.seed, device=device)
        rows.append({"variant": variant, "param": param, "linear_probe_backbone": probe_h, **scores})
    record = _record(run_dir / "frontier.json")
    if record.get("posthoc") != posthoc:
        record = {}
    record.update(version=MEASURE_VERSION, posthoc=posthoc, seed=c.seed)
    record.setdefault("splits", {})[split] = rows
    tmp = run_dir / "frontier.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, run_dir / "frontier.json")
    return rows


# ---------------------------------------------------------------- the summary
def collect(jobs: List[dict], split: str) -> List[dict]:
    """Every measured run's rows on ``split``, labelled with its design, knob value and seed."""
    rows = []
    for job in jobs:
        path = job["dir"] / "frontier.json"
        if not _measured(path, job["posthoc"], split):
            continue
        for row in _record(path)["splits"][split]:
            rows.append({"design": job["design"], "knob_key": job["knob_key"], "knob": job["knob"],
                         "seed": job["seed"], **row})
    return rows


def _fmt(point: dict, metric: str) -> str:
    mean, std, n = point[metric], point[f"{metric}_std"], point[f"{metric}_n"]
    if n == 0 or not math.isfinite(mean):
        return "–"
    digits = 1 if metric in ("active_dims", "active_per_image", "open_gates_per_image") else 3
    if metric == "posterior_entropy":
        digits = 2
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _fmt_margin(m: Optional[dict]) -> str:
    if not m or not m["n"]:
        return "–"
    return f"{m['mean']:+.3f} ± {m['std']:.3f} ({m['wins']}/{m['n']})"


def point_label(point: dict, knob_keys: Dict[str, str]) -> str:
    parts = []
    if point["knob"] is not None:
        parts.append(f"{knob_keys.get(point['design'], 'knob')}={point['knob']}")
    if point["param"] is not None:
        parts.append({"threshold": "q", "top-k": "k", "rate-cap": "r"}.get(point["variant"], "p")
                     + f"={point['param']}")
    if point["variant"] in ("mode", "mean"):
        parts.append(f"test gate {point['variant']}")
    return ", ".join(parts)


def _table(points: List[dict], knob_keys: Dict[str, str]) -> List[str]:
    columns = [(m, label) for m, label in COLUMNS if any(p[f"{m}_n"] for p in points)]
    lines = ["| curve | setting | seeds | " + " | ".join(label for _, label in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for p in points:
        star = " ★" if p["pareto"] else ""
        lines.append(f"| {p['curve']}{star} | {point_label(p, knob_keys)} | {len(p['seeds'])} | "
                     + " | ".join(_fmt(p, metric) for metric, _ in columns) + " |")
    return lines


def _selection_table(chosen: Dict[str, dict], knob_keys: Dict[str, str]) -> List[str]:
    lines = ["| design | chosen point | within 1 pt of NCL | kNN | consistency | "
             + " | ".join(f"vs {label}" for _, label in MARGINS)
             + " | weighted cons. | weighted vs all post-hoc | weighted vs ncl_topk |",
             "|---|---|---|---|---|" + "---|" * (len(MARGINS) + 3)]
    for design, entry in chosen.items():
        p, weighted = entry["point"], entry.get("weighted_margins", {})
        lines.append(f"| {design} | {point_label(p, knob_keys)} | {'yes' if entry['eligible'] else 'no'} | "
                     f"{_fmt(p, 'knn_accuracy')} | {_fmt(p, 'semantic_consistency')} | "
                     + " | ".join(_fmt_margin(entry["margins"].get(name)) for name, _ in MARGINS)
                     + f" | {_fmt(p, 'weighted_consistency')} | {_fmt_margin(weighted.get('posthoc'))} | "
                       f"{_fmt_margin(weighted.get('trained_top_k'))} |")
    return lines


def choose_default(chosen: Dict[str, dict], candidates: List[str]) -> Optional[dict]:
    """{"design", "point", "within_1pt"}: the candidate design whose front lies furthest above every post-hoc cut
    (the largest mean margin of its widest point, paired by seed at its own kNN), at its most consistent point
    within 1 point of NCL's kNN when that point is above the post-hoc cuts (a positive mean margin), else at its
    widest point (``within_1pt: False``); None without candidates."""
    wide = [(entry["widest"]["posthoc"]["mean"], design) for design, entry in chosen.items()
            if design in candidates and entry["widest"]["point"] is not None]
    if not wide:
        return None
    design = max(wide)[1]
    entry = chosen[design]
    if entry["eligible"] and entry["margins"].get("posthoc", {}).get("mean", -1) > 0:
        return {"design": design, "point": entry["point"], "within_1pt": True}
    return {"design": design, "point": entry["widest"]["point"], "within_1pt": False}


def plot(points: List[dict], path: Path, split: str) -> None:
    fig, ax = plt.subplots(figsize=(9, 6.5))
    for curve in dict.fromkeys(p["curve"] for p in points):
        members = sorted((p for p in points if p["curve"] == curve and math.isfinite(p["knn_accuracy"])),
                         key=lambda p: p["knn_accuracy"])
        if not members:
            continue
        style = dict(marker="*", markersize=14, linestyle="none") if len(members) == 1 else dict(marker="o")
        ax.errorbar([p["knn_accuracy"] for p in members], [p["semantic_consistency"] for p in members],
                    xerr=[p["knn_accuracy_std"] for p in members],
                    yerr=[p["semantic_consistency_std"] for p in members], capsize=2, label=curve, **style)
    ref = next((p for p in points if p["curve"] == REFERENCE), None)
    if ref is not None:
        ax.axhline(target_consistency(ref), color="grey", linestyle="--", linewidth=1, label="goal: NCL + ½(1 − NCL)")
        ax.axvspan(ref["knn_accuracy"] - 0.01, ax.get_xlim()[1], color="grey", alpha=0.08,
                   label="kNN within 1 point of NCL")
    ax.set(xlabel=f"kNN accuracy on the evaluated features ({split})", ylabel=f"semantic consistency ({split})",
           title=f"consistency–accuracy front on the {split} split (mean ± std over seeds)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _order(points: List[dict], jobs: List[dict]) -> List[dict]:
    order = {name: i for i, name in enumerate(dict.fromkeys(j["design"] for j in jobs))}
    return sorted(points, key=lambda p: (order.get(p["design"], 0), p["variant"], _sort_key(p["knob"]),
                                         _sort_key(p["param"])))


def _sort_key(value):
    return (0, float(value)) if isinstance(value, (int, float)) else (1, str(value))


def summary(jobs: List[dict], out: Path, header: str) -> dict:
    """The selection stage's outputs, from the validation split only."""
    rows = collect(jobs, "val")
    points = _order(summarise(rows), jobs)
    knob_keys = {j["design"]: j["knob_key"] for j in jobs if j["knob_key"]}
    chosen = select(rows, points, REFERENCE, TRAINED)
    candidates = list(dict.fromkeys(j["design"] for j in jobs if j["candidate"]))
    picked = choose_default(chosen, candidates)
    default = picked["design"] if picked else None
    def reported(design, entry):  # a design's point for the final table: within 1 point of NCL, else its widest
        if design == default:
            return picked["point"]
        return entry["point"] if entry["eligible"] or entry["widest"]["point"] is None else entry["widest"]["point"]

    selection = {design: {"knob_key": knob_keys.get(design), "knob": reported(design, e)["knob"],
                          "variant": reported(design, e)["variant"], "eligible": e["eligible"]}
                 for design, e in chosen.items()}
    (out / "selection.json").write_text(json.dumps({"designs": selection, "default": default,
                                                    "default_within_1pt": bool(picked and picked["within_1pt"]),
                                                    "candidates": candidates}, indent=1))
    (out / "frontier.json").write_text(json.dumps({"split": "val", "rows": rows, "points": points,
                                                   "chosen": chosen, "default": default}, indent=1, default=str))
    lines = [header, "", "All numbers on the **validation split** (the last training images, held out); the test "
             "split is not read. Mean ± std over seeds; ★ = Pareto-optimal in (kNN, consistency).", "",
             *_table(points, knob_keys)]
    if chosen:
        ref = next(p for p in points if p["curve"] == REFERENCE)
        lines += ["", "## Selection (validation split)", "",
                  f"Each design's most consistent point within 1 point of NCL's kNN and linear probe on h (NCL: kNN "
                  f"{_fmt(ref, 'knn_accuracy')}, consistency {_fmt(ref, 'semantic_consistency')}; target "
                  f"{target_consistency(ref):.3f}). Margins: the point's consistency minus the baseline front's at "
                  f"the point's kNN, paired by seed (mean ± std, wins/n); the weighted columns do the same in "
                  f"activation-weighted consistency, against fronts drawn in it.", "",
                  *_selection_table(chosen, knob_keys), "",
                  "Each design's widest point (the largest mean margin over all post-hoc cuts at its own kNN):", "",
                  "| design | point | kNN | consistency | vs all post-hoc |", "|---|---|---|---|---|",
                  *[f"| {d} | {point_label(e['widest']['point'], knob_keys)} | "
                    f"{_fmt(e['widest']['point'], 'knn_accuracy')} | "
                    f"{_fmt(e['widest']['point'], 'semantic_consistency')} | {_fmt_margin(e['widest']['posthoc'])} |"
                    for d, e in chosen.items() if e["widest"]["point"] is not None], "",
                  (f"Default (the candidate whose front lies furthest above every post-hoc cut): **{default}** at "
                   f"{point_label(picked['point'], knob_keys)}"
                   + (", its most consistent point within 1 point of NCL's kNN." if picked["within_1pt"] else
                      ", its widest point: it has no point within 1 point of NCL's kNN and linear probe on h that "
                      "lies above the post-hoc cuts.") if picked else "No candidate design.")]
    (out / "frontier.md").write_text("\n".join(lines) + "\n")
    if points:
        plot(points, out / "frontier.png", "validation")
    return {"points": points, "chosen": chosen, "default": default}


# ---------------------------------------------------------------- the learning curve (training lengths)
CURVE_COLUMNS = [("knn_accuracy", "kNN"), ("semantic_consistency", "consistency"),
                 ("weighted_consistency", "weighted cons."), ("active_dims", "active dims"),
                 ("posterior_entropy", "entropy / image"), ("doubt_entropy", "doubt / image"),
                 ("uncertain_images", "uncertain images"), ("uncertain_active_images", "uncertain (active) images")]


def curve_entries(jobs: List[dict], lengths: List[int]) -> List[dict]:
    """Per training length and design (NCL first): the point the validation split's selection rule chooses at that
    length (``pyro_ncl.frontier.select``; NCL: its own features) with its paired margins over the post-hoc cuts of
    the NCL runs of the same length and over ncl_topk."""
    entries = []
    for epochs in lengths:
        rows = collect([job for job in jobs if job["epochs"] == epochs], "val")
        points = summarise(rows)
        ref = next((p for p in points if p["curve"] == REFERENCE), None)
        if ref is not None:
            entries.append({"epochs": epochs, "design": REFERENCE, "point": ref, "eligible": True, "margins": {},
                            "weighted_margins": {}})
        for design, entry in select(rows, points, REFERENCE, TRAINED).items():
            entries.append({"epochs": epochs, "design": design, **{k: entry[k] for k in
                                                                   ("point", "eligible", "margins",
                                                                    "weighted_margins")}})
    return entries


def learning_curve(jobs: List[dict], out: Path, header: str, lengths: List[int]) -> dict:
    """OUT/curve.md, curve.json and curve.png: each design's chosen point against the training length."""
    entries = curve_entries(jobs, lengths)
    knob_keys = {j["design"]: j["knob_key"] for j in jobs if j["knob_key"]}
    columns = [(m, label) for m, label in CURVE_COLUMNS if any(e["point"].get(f"{m}_n") for e in entries)]
    lines = [header.replace("Consistency–accuracy front", "Learning curve"), "",
             "Each design's chosen point on the **validation split** at each training length (the selection rule of "
             "frontier.md, applied per length: `epochs=E/frontier.md`), mean ± std over seeds; margins paired by "
             "seed against the post-hoc cuts of the NCL runs of the same length and against ncl_topk, read at the "
             "design's own kNN (mean ± std, wins/n). *doubt*: the posterior entropy of the gates on z's non-zero "
             "entries (the part that changes the features); *entropy − doubt* is spent on gates the budget forces "
             "open on zeros.", "",
             "| design | epochs | point | " + " | ".join(label for _, label in columns)
             + " | vs all post-hoc | vs ncl_topk | weighted vs all post-hoc |",
             "|---|---|---|" + "---|" * (len(columns) + 3)]
    for e in sorted(entries, key=lambda e: (list(dict.fromkeys(x["design"] for x in entries)).index(e["design"]),
                                            e["epochs"])):
        lines.append(f"| {e['design']} | {e['epochs']} | {point_label(e['point'], knob_keys) or '–'} | "
                     + " | ".join(_fmt(e["point"], m) for m, _ in columns)
                     + f" | {_fmt_margin(e['margins'].get('posthoc'))} | {_fmt_margin(e['margins'].get('trained_top_k'))}"
                       f" | {_fmt_margin(e['weighted_margins'].get('posthoc'))} |")
    (out / "curve.md").write_text("\n".join(lines) + "\n")
    (out / "curve.json").write_text(json.dumps({"split": "val", "lengths": lengths, "entries": entries}, indent=1,
                                               default=str))
    if entries:
        plot_curve(entries, out / "curve.png")
    return {"entries": entries}


def plot_curve(entries: List[dict], path: Path) -> None:
    """Consistency (count-based, weighted) and kNN against the training length, one line per design (mean ± std
    over seeds); dashed, in the design's colour: the post-hoc cuts' front at the design's own kNN (its consistency
    minus its mean paired margin)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    panels = [("semantic_consistency", "posthoc", "margins", "semantic consistency"),
              ("weighted_consistency", "posthoc", "weighted_margins", "activation-weighted consistency"),
              ("knn_accuracy", None, None, "kNN accuracy")]
    for i, design in enumerate(dict.fromkeys(e["design"] for e in entries)):
        mine = sorted((e for e in entries if e["design"] == design), key=lambda e: e["epochs"])
        x = [e["epochs"] for e in mine]
        for ax, (metric, front, margins, title) in zip(axes, panels):
            ys = [e["point"][metric] for e in mine]
            ax.errorbar(x, ys, yerr=[e["point"][f"{metric}_std"] for e in mine], marker="o", capsize=3,
                        color=f"C{i}", label=design)
            if front and design != REFERENCE:
                level = [y - e[margins][front]["mean"] if e[margins].get(front, {}).get("n") else math.nan
                         for y, e in zip(ys, mine)]
                ax.plot(x, level, linestyle="--", color=f"C{i}", alpha=0.7,
                        label=f"post-hoc cuts at {design}'s kNN")
            ax.set(xlabel="training epochs", title=title, xscale="log")
            ax.set_xticks(x, [str(v) for v in x])
    axes[0].legend(fontsize=7)
    fig.suptitle("the gate against NCL sparsified after training, as the encoder trains (validation split)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- the final stage (test split, read once)
def final_designs(designs: Dict[str, dict], selection: dict) -> Dict[str, dict]:
    """NCL (with its post-hoc cuts), the trained top-k activation over its whole sweep (both are the fronts a design
    is compared with at its own kNN) and each other selected design at its chosen knob value."""
    out = {}
    for name, design in designs.items():
        if name in (REFERENCE, TRAINED):  # the baselines keep their whole sweep: a front to compare at equal kNN
            out[name] = design
        elif name in selection["designs"]:
            chosen = selection["designs"][name]
            knob = (design["knob"][0], [chosen["knob"]]) if design["knob"] else None
            out[name] = dict(design, knob=knob)
    return out


def reported_points(points: List[dict], selection: dict) -> List[dict]:
    """The final's points whose margins are reported: for each design but NCL, the point ``selection.json`` names
    (its knob and test gate); ``ncl_topk`` is measured over its whole sweep (a front), but only its chosen point is
    reported as the design."""
    chosen = selection.get("designs", {})
    out = []
    for p in points:
        if p["design"] == REFERENCE:
            continue
        pick = chosen.get(p["design"])
        if pick is not None and (p["knob"], p["variant"]) != (pick["knob"], pick["variant"]):
            continue
        out.append(p)
    return out


def final_summary(jobs: List[dict], out: Path, header: str, selection: dict) -> dict:
    rows = collect(jobs, "test")
    chosen_keys = {(d, s["knob"], s["variant"]) for d, s in selection["designs"].items()}
    rows = [r for r in rows if r["design"] == REFERENCE or (r["design"], r["knob"], r["variant"]) in chosen_keys
            or r["design"] == TRAINED]
    points = _order(summarise(rows), jobs)
    knob_keys = {j["design"]: j["knob_key"] for j in jobs if j["knob_key"]}
    fronts = baselines(REFERENCE, TRAINED)
    ref = next((p for p in points if p["curve"] == REFERENCE), None)
    report = {}
    for p in reported_points(points, selection):
        own = {k: v for k, v in fronts.items() if p["design"] not in {c.split("+")[0] for g in v for c in g}}
        report[p["design"]] = {"point": p, "eligible": ref is not None and p["knn_accuracy"] >= ref["knn_accuracy"]
                               - 0.01 and p["linear_probe_backbone"] >= ref["linear_probe_backbone"] - 0.01,
                               "margins": paired_margins(rows, point_key(p), own),
                               "weighted_margins": paired_margins(rows, point_key(p), own, "weighted_consistency")}
    default = selection.get("default")
    lines = [header, "", "The points chosen on the validation split (`selection.json`), measured on the **test "
             "split**. Mean ± std over seeds; margins paired by seed at each design's own kNN (mean ± std, "
             "wins/n).", "", *_table(points, knob_keys), "", "## Margins (test split)", "",
             *_selection_table(report, knob_keys)]
    goal = {}
    if ref is not None and default in report:
        entry, p = report[default], report[default]["point"]
        target = target_consistency(ref)
        margins = entry["margins"]
        goal = {"design": default, "knn_within_1pt": p["knn_accuracy"] >= ref["knn_accuracy"] - 0.01,
                "above_threshold_every_seed": _every(margins.get("threshold")),
                "above_top_k_every_seed": _every(margins.get("top_k")),
                "above_ncl_topk_every_seed": _every(margins.get("trained_top_k")),
                "target": target, "meets_target": p["semantic_consistency"] >= target,
                "share_to_target": (p["semantic_consistency"] - ref["semantic_consistency"])
                / (target - ref["semantic_consistency"]),
                "uncertain_images": p["uncertain_images"], "not_degenerate": p["uncertain_images"] >= 0.1}
        lines += ["", f"## Goal check of the default `{default}` (test split)", "",
                  f"- kNN {_fmt(p, 'knn_accuracy')} against NCL's {_fmt(ref, 'knn_accuracy')}: "
                  f"{'within' if goal['knn_within_1pt'] else 'not within'} 1 point;",
                  f"- consistency {_fmt(p, 'semantic_consistency')} against NCL's "
                  f"{_fmt(ref, 'semantic_consistency')}; target NCL + ½(1 − NCL) = {target:.3f} "
                  f"({'met' if goal['meets_target'] else 'not met'}; {goal['share_to_target']:.0%} of the way);",
                  f"- above NCL + threshold in every seed: {_yes(goal['above_threshold_every_seed'])}; above NCL + "
                  f"top-k: {_yes(goal['above_top_k_every_seed'])}; above ncl_topk: "
                  f"{_yes(goal['above_ncl_topk_every_seed'])};",
                  f"- test images with an uncertain gate (0.1 < q < 0.9): {_fmt(p, 'uncertain_images')} "
                  f"({'at least' if goal['not_degenerate'] else 'below'} 10%)."]
    (out / "final.md").write_text("\n".join(lines) + "\n")
    (out / "final.json").write_text(json.dumps({"split": "test", "rows": rows, "points": points, "report": report,
                                                "goal": goal}, indent=1, default=str))
    if points:
        plot(points, out / "final.png", "test")
    return {"points": points, "report": report, "goal": goal}


def _every(m: Optional[dict]) -> Optional[bool]:
    return None if not m or not m["n"] else m["wins"] == m["n"]


def _yes(flag: Optional[bool]) -> str:
    return "–" if flag is None else "yes" if flag else "no"


# ---------------------------------------------------------------- main
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="folder of the frontier (runs/ holds one folder per run)")
    p.add_argument("--designs", default=None, help="comma-separated designs to run (default: all in the file)")
    p.add_argument("--designs-file", default=str(DESIGNS_FILE), help="YAML of designs (default: %(default)s)")
    p.add_argument("--knob", action="append", default=[], metavar="DESIGN=V1,V2",
                   help="sweep DESIGN's knob over these values instead of the file's (repeatable; e.g. "
                        "--knob ncl_topk=4 for a one-point check on another dataset)")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the selection stage (default: 0,1,2)")
    p.add_argument("--final", action="store_true", help="the final stage: the selected points and NCL on the test "
                                                        "split, with --final-seeds")
    p.add_argument("--final-seeds", default="0,1,2,3,4", help="seeds of the final stage (default: 0,1,2,3,4)")
    p.add_argument("--lengths", default=None, metavar="E1,E2,...",
                   help="training lengths (epochs) to sweep: every design is trained at each (runs/…/epochs=E/seed=S),"
                        " selected per length into OUT/epochs=E/, and the chosen points are drawn as a learning "
                        "curve (OUT/curve.md, curve.json, curve.png); with --final, the one length whose test split "
                        "is read")
    p.add_argument("--val-size", type=int, default=10000, help="training images held out as the validation "
                                                               "split of every run (default: 10000)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default: 2)")
    p.add_argument("--threads", type=int, default=1, help="threads per run (default: 1)")
    p.add_argument("--device", default="cpu", help="device of the measurement (default: cpu; training: the runs' "
                                                   "--device, auto by default)")
    p.add_argument("--summary-only", action="store_true", help="only tabulate and plot what is measured")
    p.add_argument("--measure", default=None, metavar="RUN_DIR", help=argparse.SUPPRESS)
    p.add_argument("--split", default="val", choices=("val", "test"), help=argparse.SUPPRESS)
    p.add_argument("--posthoc", action="store_true", help=argparse.SUPPRESS)
    return p


def _seeds(text: str, flag: str) -> List[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ValueError(f"{flag} is empty")
    return seeds


def main(args, run_args: List[str]) -> dict:
    if args.measure:
        return measure(Path(args.measure), args.posthoc, args.device, args.split)
    if not args.out:
        raise ValueError("--out is required (the frontier's folder)")
    if args.jobs < 1 or args.threads < 1:
        raise ValueError(f"--jobs and --threads must be at least 1, got {args.jobs} and {args.threads}")
    if args.val_size < 1:
        raise ValueError(f"--val-size must be at least 1, got {args.val_size}")
    if any(a == "--val-size" or a.startswith("--val-size=") for a in run_args):
        raise ValueError("--val-size belongs before `--` (frontier.py holds out the same validation split in "
                         "every run)")
    run_args = [*run_args, f"--val-size={args.val_size}"]
    lengths = _seeds(args.lengths, "--lengths") if args.lengths else None
    if lengths:
        if any(a == "--epochs" or a.startswith("--epochs=") for a in run_args):
            raise ValueError("--epochs belongs to --lengths when lengths are swept (give them before `--`)")
        if min(lengths) < 1:
            raise ValueError(f"--lengths must be epochs of at least 1, got {args.lengths!r}")
        if args.final and len(lengths) != 1:
            raise ValueError(f"--final reads the test split at one training length; give --lengths E, got "
                             f"{args.lengths!r}")
    designs = load_designs(Path(args.designs_file), args.designs.split(",") if args.designs else None)
    designs = override_knobs(designs, args.knob)
    if REFERENCE not in designs:
        raise ValueError(f"the designs must include {REFERENCE!r} (the reference and its post-hoc cuts)")
    out = Path(args.out)
    stage = {epochs: out / f"epochs={epochs}" if epochs else out for epochs in lengths or [None]}
    selection = None
    if args.final:
        path = next(iter(stage.values())) / "selection.json"
        try:
            selection = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            raise ValueError(f"{path} is missing or unreadable: run the selection stage first "
                             f"(frontier.py --out {out} without --final)") from None
        designs = final_designs(designs, selection)
        seeds, split = _seeds(args.final_seeds, "--final-seeds"), "test"
    else:
        seeds, split = _seeds(args.seeds, "--seeds"), "val"
    for folder in stage.values():
        folder.mkdir(parents=True, exist_ok=True)
    jobs = plan(designs, seeds, out, lengths)
    for job in jobs:  # bad settings are refused before anything runs
        requested_config(job["settings"], run_args)
    command = f"python experiments/frontier.py {' '.join(sys.argv[1:])}"
    header = (f"# Consistency–accuracy front{' (final)' if args.final else ''}\n\n"
              + (f"Command: `{command}`; CPU: {cpu_model()}" if not args.summary_only else f"CPU: {cpu_model()}"))
    failures = []
    if not args.summary_only:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(run_job, job, run_args, args.threads, args.device, split): job for job in jobs}
            for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
                job = futures[future]
                try:
                    message = future.result()
                except (ValueError, RuntimeError) as err:
                    failures.append(str(err))
                    message = f"FAILED: {err}"
                print(f"[{i}/{len(jobs)}] {job['dir'].relative_to(out)}: {message}", flush=True)
    result = {}
    for epochs, folder in stage.items():
        own = [job for job in jobs if job["epochs"] == epochs]
        title = f"{header}{f'; {epochs} epochs' if epochs else ''}"
        if args.final:
            result[epochs] = final_summary(own, folder, title, selection)
            print((folder / "final.md").read_text())
        else:
            result[epochs] = summary(own, folder, title)
            print((folder / "frontier.md").read_text())
    if lengths and not args.final:
        result["curve"] = learning_curve(jobs, out, header, lengths)
        print((out / "curve.md").read_text())
    result = result[None] if not lengths else result
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(jobs)} runs failed; the first: {failures[0]}")
    return result


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
