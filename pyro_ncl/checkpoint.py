"""Atomic checkpoints (temporary file, flush, fsync, rename) and safe loading (``weights_only=True``: tensors and
plain containers only; a checkpoint that would run code is refused in one line, torch's own warnings about it
silenced)."""
from __future__ import annotations

import errno
import os
import random
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pyro
import torch

from pyro_ncl import distributed


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted or read; the message names the file and the reason."""


def save_atomic(state: Dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so that a crash at any moment leaves either the old or the new file."""
    path = Path(path)
    os.replace(_write_beside(state, path), path)
    _fsync_folder(path.parent)


def _write_beside(state: Dict[str, Any], path: Path) -> Path:
    """``state`` written, flushed and fsynced to a temporary file in ``path``'s folder; returns its path (removed
    again when the write fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _Writer(f)
            try:
                torch.save(state, writer)
            except RuntimeError:
                if writer.error is not None:  # torch reports a failed write as "unexpected pos ..."
                    raise writer.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return Path(tmp)


class _Writer:
    """A binary file for ``torch.save`` that remembers the OSError of a failed write (ENOSPC, EFBIG), which torch
    itself reports only as a position mismatch."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: Path, map_location="cpu") -> Dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, never code. Onto the CPU by default:
    the RNG states must be CPU tensors, and ``restore_training_state`` puts everything else on the device of the
    parameters it restores into (so a checkpoint of one GPU loads on another, or without one)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return _torch_load(path, map_location=map_location)
    except Exception as err:  # unpickling refused, truncated zip, corrupt bytes
        raise CheckpointError(f"refusing checkpoint {path}: {_load_failure(err)}") from None


def _torch_load(path: Path, **kwargs) -> Any:
    """``torch.load(path, weights_only=True, **kwargs)`` without torch's warnings (e.g. "Detected pickle protocol 4
    in the checkpoint" before a refusal), so that a refused file is one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, weights_only=True, **kwargs)


def _load_failure(err: BaseException) -> str:
    """The gist of torch.load's (many-line) error."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if lines[0].startswith("Weights only load failed"):
        detail = next((line for line in lines[1:] if "GLOBAL" in line or "global" in line), "")
        return "loading it would run code, not only read tensors" + (f" ({detail.rstrip('.')})" if detail else "")
    return lines[0].split(". ")[0][:300]


# ---------------------------------------------------------------- full training state
def _rng_state() -> Dict[str, Any]:
    """Every random state a step draws from, in types that ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if torch.cuda.is_available():
        _set_cuda_rng_states(state.get("cuda"))


def _set_cuda_rng_states(states) -> None:
    """The saved CUDA generator states, one per GPU the saving process saw, restored for the first
    min(saved, visible) GPUs (a run of 4 GPUs resumed where 2 are visible, or the reverse); a note on stderr says
    when the counts differ, since the GPUs beyond them continue from their seeds instead."""
    states, visible = list(states or []), torch.cuda.device_count()
    for device, state in enumerate(states[:visible]):
        torch.cuda.set_rng_state(state, device)
    if len(states) != visible and distributed.is_main():
        restored = f"restored for cuda:0..cuda:{min(len(states), visible) - 1}" if states else "none restored"
        print(f"note: the checkpoint holds the CUDA random states of {len(states)} GPU(s), {visible} visible now: "
              f"{restored}; gate noise drawn on the other GPUs continues from the seed, not from the checkpoint",
              file=sys.stderr)


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def gather_rng_states() -> List[Dict[str, Any]]:
    """Every process's random state, in rank order (``[this process's]`` in one process). A collective under
    ``torch.distributed``: every process calls it, also those that do not write the checkpoint."""
    return distributed.all_gather_objects(_rng_state())


def training_state(system, trainer, config, epoch: int, step_in_epoch: int, elapsed: float,
                   rng_ranks: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Everything needed to continue exactly: networks (with BatchNorm buffers), guide, optimiser, schedule, step,
    position in the data order, the RNG states of the processes (``rng_ranks``, from ``gather_rng_states``) and
    Pyro's non-module params (e.g. decaying-average baselines)."""
    store = pyro.get_param_store()
    return dict(system=system.state_dict(), optimizer=trainer.optimizer.state_dict(),
                scheduler=trainer.scheduler.state_dict(), step=trainer.step_count, epoch=epoch,
                step_in_epoch=step_in_epoch, elapsed=elapsed, rng_ranks=rng_ranks, world_size=len(rng_ranks),
                config=config.to_dict(),
                pyro_params={k: v.detach().clone() for k, v in store.items() if "$$$" not in k})


def restore_training_state(state: Dict[str, Any], system, trainer, seed: int):
    """Inverse of ``training_state``; returns (epoch, step_in_epoch, elapsed seconds). Each process continues its
    own random stream, ``rng_ranks[rank]``. A checkpoint of another number of processes gives the same batches but
    other gate noise (a warning says so): one process takes rank 0's stream, several are seeded afresh per rank
    (from ``seed`` and the step). Tensors kept outside the modules (Pyro's params, e.g. the decaying-average
    baseline of ``--guide bernoulli``) go to the device of the system's parameters."""
    try:
        system.load_state_dict(state["system"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint does not fit this model: {str(err).splitlines()[0]}") from None
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.step_count = state["step"]
    store, device = pyro.get_param_store(), next(system.parameters()).device
    for name, value in state.get("pyro_params", {}).items():
        store[name] = value.to(device)
    rng_ranks = state["rng_ranks"] if "rng_ranks" in state else [state["rng"]]  # older one-process checkpoints
    world_size = distributed.world_size()
    if len(rng_ranks) == world_size or world_size == 1:
        _set_rng_state(rng_ranks[distributed.rank()])
    else:
        distributed.seed_rank(seed * 7_919 + state["step"])
    if len(rng_ranks) != world_size and distributed.is_main():
        print(f"warning: checkpoint written by {len(rng_ranks)} process(es), resumed by {world_size}: same "
              f"batches, other gate noise", file=sys.stderr)
    return state["epoch"], state["step_in_epoch"], state["elapsed"]


def save_checkpoint(state: Dict[str, Any], path: Path) -> None:
    """Save so that the last good checkpoint survives any failure: the new file is written and fsynced beside
    ``path`` first (a full disk stops here, with nothing touched: a CheckpointError names the folder and the
    checkpoint kept); then the current ``path`` becomes ``*.prev.pt`` only if it loads (a damaged one is replaced,
    never rotated over a good previous one); then the new file takes its place."""
    path = Path(path)
    previous = path.with_suffix(".prev.pt")
    try:
        tmp = _write_beside(state, path)
    except (OSError, RuntimeError) as err:  # ENOSPC, EFBIG (ulimit -f), torch's "file write failed"
        kept = next((str(p) for p in (path, previous) if _loads(p)), None)
        raise CheckpointError(f"could not write a checkpoint in {path.parent}: {_write_failure(err)}; "
                              + (f"the last good checkpoint, {kept}, is kept" if kept else
                                 "there is no earlier checkpoint")) from None
    if _loads(path):
        os.replace(path, previous)
    os.replace(tmp, path)
    _fsync_folder(path.parent)


def _write_failure(err: BaseException) -> str:
    hints = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
             errno.EFBIG: "the file-size limit (ulimit -f) is reached"}
    if isinstance(err, OSError) and err.errno in hints:
        return hints[err.errno]
    return err.strerror if isinstance(err, OSError) and err.strerror else str(err).strip().splitlines()[0][:200]


def _loads(path: Path) -> bool:
    """Whether ``path`` is a checkpoint that loads (unpickled with ``weights_only``; tensors memory-mapped, not
    read, so the check is cheap even for large models)."""
    if not Path(path).is_file():
        return False
    try:
        _torch_load(path, map_location="cpu", mmap=True)
    except Exception:
        return False
    return True


# what ``training_state`` writes and ``restore_training_state`` needs
TRAINING_KEYS = ("system", "optimizer", "scheduler", "step", "epoch", "step_in_epoch", "elapsed", "config")


def check_training_state(state: Any, path: Path) -> Dict[str, Any]:
    """``state`` if it is a training checkpoint (``training_state``'s keys, RNG states), else a CheckpointError
    naming ``path`` and what is missing."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a training checkpoint: it holds a {type(state).__name__}, not the "
                              f"dictionary training_state writes")
    missing = [k for k in TRAINING_KEYS if k not in state] + ([] if "rng_ranks" in state or "rng" in state
                                                              else ["rng_ranks"])
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint of this code: it lacks {', '.join(missing)}")
    if not isinstance(state["system"], dict) or not isinstance(state["config"], dict):
        raise CheckpointError(f"{path} is not a training checkpoint: its system and config are not dictionaries")
    return state


def load_latest(run_dir: Path) -> Dict[str, Any]:
    """The newest usable training checkpoint of a run: ``checkpoint.pt``, else ``checkpoint.prev.pt`` (with a
    warning from rank 0). Neither usable: a CheckpointError naming both reasons."""
    latest, previous = Path(run_dir) / "checkpoint.pt", Path(run_dir) / "checkpoint.prev.pt"
    try:
        return check_training_state(load_checkpoint(latest), latest)
    except CheckpointError as err:
        if not previous.exists():
            raise
        first = err
    try:
        state = check_training_state(load_checkpoint(previous), previous)
    except CheckpointError as err:
        raise CheckpointError(f"no usable checkpoint in {run_dir}: {first}; {err}") from None
    if distributed.is_main():
        print(f"warning: {first}; resuming from {previous}", file=sys.stderr)
    return state
