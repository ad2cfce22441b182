"""One policy for the runs a tool launches (``experiments/frontier.py``, ``experiments/sweep.py``): each run is
``experiments/run_svi.py`` in a subprocess, in its own folder, and that folder decides what happens:

    empty (or missing)                                  → trained (``--overwrite`` of nothing)
    a finished run (metrics.json) with the same settings → skipped
    an interrupted run (a checkpoint) with the same settings → resumed from its checkpoint (``--resume``)
    a run with other settings                           → refused: a one-line ValueError naming the settings that
                                                           differ (nothing already written is lost; remove the
                                                           folder or choose another --out)

"The same settings": ``config.changed_settings`` of the folder's config.json and the wanted ones (bookkeeping
aside; an ungated run ignores the gate's settings). ``threads`` sets OMP/MKL threads of the subprocess.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from pyro_ncl.config import Config, changed_settings
from pyro_ncl.run_folder import read_run_config

RUN_SVI = Path(__file__).resolve().parent.parent / "experiments" / "run_svi.py"
run_command = subprocess.run  # how a run is started (tests replace it with a stand-in for run_svi.py)


def settings_differ(run_dir: Path, wanted: dict) -> List[str]:
    """``key: saved → wanted`` for each method setting where the folder's config.json differs from ``wanted``
    (resolved settings; a setting the saved run lacks, written by an older version, counts as its default)."""
    saved = read_run_config(run_dir)
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    return [f"{k}: {saved.get(k, defaults.get(k))!r} → {wanted[k]!r}" for k in changed_settings(saved, wanted)]


def thread_env(threads: Optional[int]) -> dict:
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    return env


def last_line(result: subprocess.CompletedProcess) -> str:
    return (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or [""])[-1]


def launch(run_dir: Path, flags: List[str], wanted: dict, threads: Optional[int] = None,
           script: Path = RUN_SVI) -> str:
    """Train, resume or skip the run of ``flags`` (run_svi.py's, without --out) in ``run_dir`` by the policy of
    the module docstring; ``wanted`` are its resolved settings (``designs.requested_config``). Returns what
    happened ("trained in 123 s", "resumed in 45 s", "done before"); a ValueError for a folder of another run, a
    RuntimeError with run_svi.py's last line when it fails."""
    run_dir = Path(run_dir)
    if (run_dir / "config.json").exists():
        differ = settings_differ(run_dir, wanted)
        if differ:
            raise ValueError(f"{run_dir} holds a run with other settings ({'; '.join(differ[:3])}); remove it or "
                             f"choose another --out")
    if (run_dir / "metrics.json").exists():
        return "done before"
    if (run_dir / "checkpoint.pt").exists() or (run_dir / "checkpoint.prev.pt").exists():
        command, what = ["--resume", str(run_dir)], "resumed"
    else:
        command, what = [*flags, "--out", str(run_dir), "--overwrite"], "trained"
    start = time.perf_counter()
    result = run_command([sys.executable, str(script), *command], capture_output=True, text=True,
                         env=thread_env(threads))
    if result.returncode != 0:
        raise RuntimeError(f"run_svi failed in {run_dir}: {last_line(result)}")
    return f"{what} in {time.perf_counter() - start:.0f} s"
