"""Where a result comes from: the library's version and the git commit of the code that made it (with a flag when
the work tree had uncommitted changes), stamped into every run's config.json and metrics.json and into every results
page, so that a number can be tied to the code that made it.

    provenance()   {"library_version": "0.1.0", "git_commit": "1d1b19b…" or None, "git_dirty": False or None,
                    "torch_version": ..., "pyro_version": ...}

The commit is that of the repository holding the imported ``pyro_ncl`` package (an editable install, a checkout on
``PYTHONPATH``); None where there is none (an installed wheel) or git is missing.
"""
from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def library_version() -> str:
    try:
        return metadata.version("pyro-ncl")
    except metadata.PackageNotFoundError:
        return "unknown"


def _git(*args: str) -> Optional[str]:
    try:
        result = subprocess.run(["git", "-C", str(PACKAGE_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


@functools.lru_cache(maxsize=None)
def git_state() -> Dict[str, Any]:
    """{"git_commit": the HEAD commit or None, "git_dirty": whether tracked files differ from it (None without
    git)}, read once per process."""
    commit = _git("rev-parse", "HEAD") if (PACKAGE_ROOT / ".git").exists() else None
    if commit is None:
        return {"git_commit": None, "git_dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def provenance() -> Dict[str, Any]:
    import pyro
    import torch

    return {"library_version": library_version(), **git_state(), "torch_version": torch.__version__,
            "pyro_version": pyro.__version__}


def short(record: Dict[str, Any]) -> str:
    """"commit 1d1b19b (uncommitted changes), pyro-ncl 0.1.0" for a provenance record (or a metrics/config dict
    holding one)."""
    record = record.get("provenance", record)
    commit = record.get("git_commit")
    text = f"commit {commit[:7]}" if commit else "no git commit"
    if record.get("git_dirty"):
        text += " (uncommitted changes)"
    return f"{text}, pyro-ncl {record.get('library_version', 'unknown')}"
