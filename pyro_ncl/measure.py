"""Measure a finished run for the frontier protocol: every feature variant of it (``pyro_ncl.frontier.variants``:
its own features, its gate's mode and mean, NCL's post-hoc cuts) scored on a split, into RUN_DIR/frontier.json
under ``splits[split]`` (the other split's rows are kept), stamped with the code's provenance.

    python -m pyro_ncl.measure RUN_DIR --split val [--posthoc] [--device cpu]

``frontier.py`` runs it in a subprocess per run (memory and threads of their own); ``measured(path, posthoc,
split)`` tells whether a folder is measured already by this version (``MEASURE_VERSION``: bumped when what is
measured changes, so that older files are measured again).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

MEASURE_VERSION = 3


def record(path: Path) -> dict:
    """A frontier.json of this version, or {}."""
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return saved if isinstance(saved, dict) and saved.get("version") == MEASURE_VERSION else {}


def measured(path: Path, posthoc: bool, split: str) -> bool:
    saved = record(path)
    return saved.get("posthoc") == posthoc and split in saved.get("splits", {})


def measure(run_dir: Path, posthoc: bool, device: str, split: str) -> List[dict]:
    """Every feature variant of a finished run on ``split`` ("val" or "test"), scored with its own settings (probe
    epochs, kNN k, seed, evaluation subset) against the training split; returns the rows."""
    from pyro_ncl.evaluation import extract
    from pyro_ncl.frontier import measure_features, variants
    from pyro_ncl.probes import linear_probe
    from pyro_ncl.provenance import provenance
    from pyro_ncl.train import resolve_device
    from pyro_ncl.trained_run import load_run

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
    saved = record(run_dir / "frontier.json")
    if saved.get("posthoc") != posthoc:
        saved = {}
    saved.update(version=MEASURE_VERSION, posthoc=posthoc, seed=c.seed, provenance=provenance())
    saved.setdefault("splits", {})[split] = rows
    tmp = run_dir / "frontier.json.tmp"
    tmp.write_text(json.dumps(saved, indent=1))
    os.replace(tmp, run_dir / "frontier.json")
    return rows


def measure_in_subprocess(run_dir: Path, posthoc: bool, split: str, device: str = "cpu",
                          threads: Optional[int] = None) -> None:
    """``measure`` in a subprocess (a RuntimeError with its last line when it fails)."""
    from pyro_ncl.launcher import last_line, thread_env

    cmd = [sys.executable, "-m", "pyro_ncl.measure", str(run_dir), "--split", split, "--device", device]
    result = subprocess.run(cmd + (["--posthoc"] if posthoc else []), capture_output=True, text=True,
                            env=thread_env(threads))
    if result.returncode != 0:
        raise RuntimeError(f"measuring {run_dir} failed: {last_line(result)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--posthoc", action="store_true", help="also NCL's features sparsified after training")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    try:
        measure(Path(args.run_dir), args.posthoc, args.device, args.split)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
