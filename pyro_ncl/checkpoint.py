"""Atomic checkpoints (temporary file, flush, fsync, rename) and safe loading (``weights_only=True``)."""
from __future__ import annotations

import os
import random
import sys
import tempfile
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: Path, map_location="cpu") -> Dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, never code. Onto the CPU by default:
    the RNG states must be CPU tensors, and ``restore_training_state`` puts everything else on the device of the
    parameters it restores into (so a checkpoint of one GPU loads on another, or without one)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling refused, truncated zip, corrupt bytes
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"refusing checkpoint {path}: {reason[:300]}") from None


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
    """Atomic save; the checkpoint it replaces is kept as ``*.prev.pt`` (the last good one survives a bad write)."""
    path = Path(path)
    if path.exists():
        os.replace(path, path.with_suffix(".prev.pt"))
    save_atomic(state, path)


def load_latest(run_dir: Path) -> Dict[str, Any]:
    """The newest loadable checkpoint of a run: ``checkpoint.pt``, else ``checkpoint.prev.pt`` (with a warning)."""
    latest, previous = Path(run_dir) / "checkpoint.pt", Path(run_dir) / "checkpoint.prev.pt"
    try:
        return load_checkpoint(latest)
    except CheckpointError as err:
        if not previous.exists():
            raise
        print(f"warning: {err}; resuming from {previous}", file=sys.stderr)
        return load_checkpoint(previous)
