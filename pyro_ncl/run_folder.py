"""A run's folder: the one list of what a run writes there, the lock that gives the folder to one run at a time,
the removal of an earlier run's outputs (``--overwrite``), metrics files that strict JSON readers accept, and a
run's settings written to and read from its config.json (``save_config``, ``read_run_config``,
``config_from_run``).

    with RunLock(out):                       # a second run on ``out`` is refused while this one lives
        clear_outputs(out)                   # everything in OUTPUTS, nothing else (a user's notes stay)
        write_metrics(out / "metrics.json", {"knn_accuracy": float("nan")})   # written as null
    read_metrics(out / "metrics.json")       # {"knn_accuracy": nan}
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

if TYPE_CHECKING:
    from pyro_ncl.config import Config

# Everything a run, or a tool run on it afterwards, writes into its folder (names or glob patterns): an output
# added anywhere is added here, so that --overwrite removes it and a folder holding it counts as taken.
OUTPUTS = (
    "config.json", "log.csv", "metrics.json", "loss.png",            # experiments/run_svi.py
    "checkpoint.pt", "checkpoint.prev.pt", ".checkpoint*.tmp",       # pyro_ncl/checkpoint.py (and its temp files)
    "eval",                                                          # experiments/evaluate.py
    "frontier",                                                      # experiments/frontier.py measurements
    "tensorboard", "events.out.tfevents.*",                          # TensorBoard event files
)
LOCK_NAME = ".lock"


def outputs_in(folder: Path) -> List[Path]:
    """The outputs of an earlier run that ``folder`` holds (sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted({path for pattern in OUTPUTS for path in folder.glob(pattern)})


def clear_outputs(folder: Path) -> List[Path]:
    """Remove every output of an earlier run from ``folder`` (files and folders in ``OUTPUTS``; other files stay).
    Returns what was removed."""
    removed = outputs_in(folder)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


class RunLock:
    """An exclusive ``fcntl.flock`` on ``folder/.lock``, held for the life of a run: a second run on the folder
    is refused (a ValueError naming the holder). The kernel drops the lock when its process ends, however it ends
    (SIGKILL included), so a lock file left by a process that is gone — a stale lock — is simply taken over. The
    file records the holder (pid, host, start time) for the message, and is removed on release."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _holder(fd)
                    os.close(fd)
                    raise ValueError(f"--out {self.folder} is in use by another run ({holder}); wait for it to end "
                                     f"or choose another --out") from None
                if _same_file(fd, self.path):
                    break
                os.close(fd)  # its holder removed the file between our open and our lock: lock the new one
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        except OSError as err:
            raise ValueError(f"--out {self.folder} is not writable: {err.strerror}") from None
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file, then unlock (in this order, so that a waiting run never locks a removed file)."""
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the lock file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        pid, host, since = int(info["pid"]), info["host"], info["since"]
    except (OSError, ValueError, KeyError, TypeError):
        return "the lock file names no holder yet"
    gone = ""
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            gone = "; that process has ended, but a process it started still holds the lock"
        except PermissionError:
            pass
    return f"pid {pid} on {host}, since {since}{gone}"


# ---------------------------------------------------------------- metrics files
def write_metrics(path: Path, metrics: Dict[str, Any]) -> str:
    """Write ``metrics`` as strict JSON: NaN and ±inf become null (a bare NaN is refused by strict readers);
    atomically (temporary file, then rename). Returns the text written."""
    text = json.dumps(_finite(metrics), indent=2, allow_nan=False)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return text


def read_json_mapping(path: Path, noun: str) -> Dict[str, Any]:
    """A JSON file holding a mapping of ``noun``: value; one-line ValueErrors naming the file when it does not
    parse or holds something else (FileNotFoundError passes through, for callers to name what is missing)."""
    try:
        values = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f" ({err.msg} at line {err.lineno})" if isinstance(err, json.JSONDecodeError) else ""
        raise ValueError(f"{path} does not parse as JSON{where}") from None
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of {noun}: value, got {type(values).__name__}")
    return values


def read_metrics(path: Path) -> Dict[str, Any]:
    """A metrics file, null values back as NaN; a one-line ValueError naming the file when it does not parse."""
    try:
        return _nan_for_null(read_json_mapping(path, "metric"))
    except FileNotFoundError as err:
        raise ValueError(f"cannot read {path}: {err.strerror}") from None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _nan_for_null(value: Any) -> Any:
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {k: _nan_for_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_for_null(v) for v in value]
    return value


# ---------------------------------------------------------------- a run's settings (config.json)
PROVENANCE_KEY = "provenance"  # config.json's record of the code that ran (pyro_ncl.provenance), not a setting


def read_run_config(run_dir: Path) -> Dict[str, Any]:
    """The settings a run saved in its ``config.json`` (its ``provenance`` record left out); a one-line ValueError
    when missing or unparsable."""
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise ValueError(f"{run_dir} is not a folder (expected a run folder holding config.json)")
    try:
        values = read_json_mapping(path, "setting")
    except FileNotFoundError:
        raise ValueError(f"{run_dir} has no config.json (is it a run folder?)") from None
    values.pop(PROVENANCE_KEY, None)
    return values


def config_from_run(run_dir: Path, unknown: str = "raise", label: Optional[str] = None) -> "Config":
    """The ``Config`` a run saved in its ``config.json`` (not resolved), every value checked (``check_setting``,
    errors name the file and the key). Settings this version does not know: ``unknown="raise"``: a one-line
    ValueError (naming the run as ``label``, default its folder); ``"warn"``: a warning, and they are left out
    (e.g. a run written by another version of the code)."""
    from pyro_ncl.config import FIELD_NAMES, Config, check_setting

    if unknown not in ("raise", "warn"):
        raise ValueError(f"unknown must be 'raise' or 'warn', got {unknown!r}")
    values = read_run_config(run_dir)
    extra = sorted(set(values) - FIELD_NAMES)
    if extra and unknown == "raise":
        raise ValueError(f"{label or run_dir}: config.json has unknown settings {', '.join(extra)}")
    if extra:
        warnings.warn(f"{Path(run_dir) / 'config.json'}: ignoring unknown settings {', '.join(extra)}", stacklevel=2)
    path = Path(run_dir) / "config.json"
    return Config(**{k: check_setting(k, v, str(path)) for k, v in values.items() if k in FIELD_NAMES})


def save_config(config: "Config", path: Path) -> None:
    """config.json: every setting, and under ``provenance`` the library version and git commit of the code."""
    from pyro_ncl.provenance import provenance

    path.write_text(json.dumps({**config.to_dict(), PROVENANCE_KEY: provenance()}, indent=2))
