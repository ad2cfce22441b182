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
from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
from pathlib import Path
from typing import List

from pyro_ncl.cli import parse_launcher_args
from pyro_ncl.designs import load_designs, override_knobs, plan, requested_config, setting_flags
from pyro_ncl.frontier import REFERENCE, final_designs
from pyro_ncl.frontier_report import final_report, header, learning_curve, record_page, selection_report
from pyro_ncl.launcher import launch
from pyro_ncl.measure import measure_in_subprocess, measured

DESIGNS_FILE = Path(__file__).resolve().parents[2] / "experiments" / "frontier_designs.yaml"


def run_job(job: dict, run_args: List[str], threads: int, device: str, split: str) -> str:
    """Train, resume or skip the job's run (``pyro_ncl.launcher``), then measure it on ``split`` unless it is
    (``pyro_ncl.measure``); returns a status line."""
    status = launch(job["dir"], [*run_args, *setting_flags(job["settings"])], job["wanted"], threads)
    if not measured(job["dir"] / "frontier.json", job["posthoc"], split):
        measure_in_subprocess(job["dir"], job["posthoc"], split, device, threads)
        status += f", measured on {split}"
    return status


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
    p.add_argument("--record", default=None, metavar="PAGE.md",
                   help="append this invocation's page (frontier.md, final.md, or curve.md with --lengths) and its "
                        "figure to a results page as a dated entry (e.g. docs/results/learning_curve.md)")
    p.add_argument("--record-title", default=None, help="the entry's title (default: the stage's)")
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
        job["wanted"] = requested_config(job["settings"], run_args)
    command = None if args.summary_only else f"python experiments/frontier.py {' '.join(sys.argv[1:])}"
    title = f"Consistency–accuracy front{' (final)' if args.final else ''}"
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
        page = header(f"{title}{f', {epochs} epochs' if epochs else ''}", command)
        if args.final:
            result[epochs] = final_report(own, folder, page, selection)
            print((folder / "final.md").read_text())
        else:
            result[epochs] = selection_report(own, folder, page)
            print((folder / "frontier.md").read_text())
    if lengths and not args.final:
        result["curve"] = learning_curve(jobs, out, header("Learning curve", command), lengths)
        print((out / "curve.md").read_text())
    if args.record:
        folder = next(iter(stage.values()))
        name = "final" if args.final else "curve" if lengths else "frontier"
        where = out if name == "curve" else folder
        record_page(Path(args.record), args.record_title or f"{title}{'' if name != 'curve' else ': learning curve'}",
               where / f"{name}.md", where / f"{name}.png")
    result = result[None] if not lengths else result
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(jobs)} runs failed; the first: {failures[0]}")
    return result


def cli(argv=None) -> int:
    args = parse_launcher_args(parser(), argv)
    try:
        main(args, args.run_args)
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1
    return 0
