"""How a run uses its device: torch back-end settings, the "auto" defaults that feed a GPU, and the one way host
tensors reach the device without a host-device synchronisation.

``configure(config, device)`` is called once by ``run_svi`` after the device is known:

* CUDA, by default: cuDNN benchmark on (the fastest convolution algorithm for each input shape, chosen at the first
  steps) and TF32 tensor cores allowed for fp32 matmuls and convolutions (10-bit mantissa products, fp32
  accumulation). ``--deterministic``: neither, cuDNN's deterministic algorithms and
  ``torch.use_deterministic_algorithms`` (with warnings, not errors, for ops that have no deterministic form).
* ``--gpu-augment`` unset ("auto"): on for CUDA with a dataset that offers it (the folder datasets: crop and flip
  in the loader workers, uint8 views, colour work batched on the device), off otherwise.
* ``--num-workers`` unset ("auto"): resolved by the folder datasets when they build their loaders
  (``default_num_workers``): a share of the visible cores on CUDA, none on the CPU.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import platform
from pathlib import Path

import torch

MAX_AUTO_WORKERS = 16


def set_backends(device: torch.device, deterministic: bool = False) -> None:
    """cuDNN benchmark and TF32 for fp32 matmuls on CUDA, or deterministic algorithms (``deterministic``)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible results
        torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.device(device).type != "cuda":
        return
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic
    torch.set_float32_matmul_precision("highest" if deterministic else "high")


def configure(config, device: torch.device):
    """Set the back-ends for ``device`` and resolve the "auto" settings of ``config`` that depend on it (a new
    ``Config``; the resolved ``gpu_augment`` is what ``config.json`` records)."""
    set_backends(device, config.deterministic)
    if config.gpu_augment is None:
        gpu_augment = torch.device(device).type == "cuda" and dataset_takes(config.dataset, "gpu_augment")
        config = dataclasses.replace(config, gpu_augment=gpu_augment)
    return config


def dataset_takes(name: str, option: str) -> bool:
    """Whether the factory of dataset ``name`` accepts ``option``."""
    from pyro_ncl.data import DATASETS
    return option in inspect.signature(DATASETS[name]).parameters


def visible_cores() -> int:
    """CPU cores this process may run on (its affinity mask: what a container or ``taskset`` grants)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU as ``lscpu`` names it, with its family and model when the name alone is vague ("AMD EPYC (family 25
    model 17)"): times in reports are only comparable on the same CPU. Off Linux: ``platform.processor()``."""
    fields = {}
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


def default_num_workers(device) -> int:
    """Loader workers of a folder dataset when ``--num-workers`` is not given: on CUDA this process's share of the
    visible cores (torchrun's LOCAL_WORLD_SIZE processes per machine), one left for the training process, at least
    1 and at most 16; on the CPU 0 (the cores are busy training)."""
    if torch.device(device).type != "cuda":
        return 0
    share = visible_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_AUTO_WORKERS, share - 1))


def to_device(x: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on ``device`` without a host-device synchronisation: on CUDA copied from pinned memory with
    ``non_blocking=True`` (the caching host allocator keeps the pinned block until the copy is done); unchanged
    when it is there already."""
    device = torch.device(device)
    if x.device == device or (device.type == x.device.type and device.index is None):
        return x
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)
