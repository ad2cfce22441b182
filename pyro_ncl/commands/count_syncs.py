"""Count the host-device synchronisations per training step, for each data path and method: the moments the host
waits for the GPU (each one drains the GPU's queue of work; the goal is one per step, the ELBO's value).

    python experiments/count_syncs.py                  # on CUDA when there is one; prints a table, exit 1 if over
    python experiments/count_syncs.py --device cpu     # what can be counted without a GPU (see below)

On CUDA, ``torch.cuda.set_sync_debug_mode("warn")`` makes every synchronising call (a blocking copy, ``.item()``,
``nonzero``, a boolean-mask gather, ...) warn, and the warnings are counted. On the CPU nothing waits, so the count
is of the calls that would wait on CUDA (``CallCounter``): ``.item()``, ``float``/``int``/``bool`` of a tensor,
``.tolist()``, ``nonzero``, boolean-mask indexing, a Python number written at tensor indices,
``torch.tensor``/``torch.as_tensor`` of Python values onto an explicit device, and blocking ``.to(device)``
copies. Where the host and the device are one, some waits cannot be told from no-ops (a copy of a host tensor to
the device by another route), so only the CUDA count is complete.

Each row runs ``--warmup`` steps, then counts ``--steps`` more: syncs per step of making the batch (the data: 0
expected) and of ``SVITrainer.step`` (1 expected). The ``torchrun`` row runs the data-parallel code path (rank 0 of
a 2-process shard of the data, gathered features, GlobalBatchNorm, the flat gradient all-reduce) in a
one-process group (gloo on the CPU, NCCL on CUDA) with the trainer set to take that path.
"""
from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pyro
import torch
import torch.distributed as dist
from PIL import Image
from torch.overrides import TorchFunctionMode

from pyro_ncl import distributed
from pyro_ncl.backends import set_backends
from pyro_ncl.config import Config
from pyro_ncl.data.base import ImageTensors, InMemoryData
from pyro_ncl.data.cifar import cifar_augment
from pyro_ncl.data.file_data import FolderData
from pyro_ncl.data.imagenet100 import imagenet_device_augment, imagenet_eval_transform, imagenet_train_transform
from pyro_ncl.data.imagenet100 import normalise
from pyro_ncl.data.stl10 import STL10Data
from pyro_ncl.system import build_system
from pyro_ncl.train import SVITrainer, resolve_device

SYNC_WARNING = "called a synchronizing CUDA operation"
METHODS = {  # row name: Config overrides (the data: in-memory RGB images)
    "bayesncl": dict(method="bayesncl"),
    "relaxed_soft+concrete": dict(method="bayesncl", prior="concrete", guide="relaxed_soft"),
    "deterministic": dict(method="bayesncl", guide="deterministic"),
    "beta_bernoulli": dict(method="bayesncl", prior="beta_bernoulli"),
    "ncl": dict(method="ncl"),
    "tricl": dict(method="tricl"),
    "bcl": dict(method="bcl"),
    "simlap": dict(method="simlap"),
}


# ---------------------------------------------------------------- counting
class CallCounter(TorchFunctionMode):
    """Records the torch calls that make the host wait for a CUDA device (see the module docstring)."""

    WAITS = {torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__bool__,
             torch.Tensor.__index__, torch.Tensor.tolist, torch.Tensor.nonzero, torch.nonzero, torch.argwhere,
             torch.masked_select, torch.Tensor.masked_select}
    INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.index_put_, torch.Tensor.index_put}
    COPIES = {torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.copy_}

    def __init__(self):
        super().__init__()
        self.calls: List[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._waits(func, args, kwargs):
            self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)

    def _waits(self, func, args, kwargs) -> bool:
        if func in self.WAITS:
            return True
        if func in self.INDEXING and len(args) > 1:
            index = args[1] if isinstance(args[1], (tuple, list)) else (args[1],)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index):
                return True  # the shape of the result depends on the mask's values
            # tensor[indices] = number: the number reaches the device as a host tensor, copied before the write
            value = args[2] if len(args) > 2 else None
            return (func is not torch.Tensor.__getitem__ and any(isinstance(i, torch.Tensor) for i in index)
                    and isinstance(value, (bool, int, float)))
        if func in (torch.tensor, torch.as_tensor):
            return not isinstance(args[0] if args else kwargs.get("data"), torch.Tensor) and "device" in kwargs
        if func in self.COPIES and not kwargs.get("non_blocking", False):
            if func is torch.Tensor.copy_:
                return False  # an in-place copy between tensors of one device here
            targets = list(args[1:]) + [kwargs.get("device")]
            return any(isinstance(t, (str, torch.device)) for t in targets) and not _non_blocking(args)
        return False


def _non_blocking(args) -> bool:
    return any(a is True for a in args[2:])  # .to(device, dtype, non_blocking) positional form


class SyncCount:
    """``with SyncCount(device) as count: ...``, then ``count.value``: synchronisations in the block."""

    def __init__(self, device: torch.device):
        self.device, self.value = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self._record = warnings.catch_warnings(record=True)
            self._warnings = self._record.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        else:
            self._mode = CallCounter().__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
            self._record.__exit__(*exc)
            self.value = sum(SYNC_WARNING in str(w.message) for w in self._warnings)
            torch.cuda.synchronize()
        else:
            self._mode.__exit__(*exc)
            self.value = len(self._mode.calls)
        return False


# ---------------------------------------------------------------- data
def memory_data(n: int, size: int) -> InMemoryData:
    g = torch.Generator().manual_seed(0)
    split = ImageTensors(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                         torch.arange(n) % 10)
    return InMemoryData("memory", split, split, num_classes=10, mean=[0.5] * 3, std=[0.25] * 3,
                        augment=cifar_augment(size))


def stl10_data(n: int) -> STL10Data:
    """Half labelled in memory, half from an unlabeled array in the file layout (STL-10's memmap)."""
    g = torch.Generator().manual_seed(0)
    labelled = ImageTensors(torch.randint(0, 256, (n // 2, 3, 96, 96), dtype=torch.uint8, generator=g),
                            torch.arange(n // 2) % 10)
    unlabeled = np.random.default_rng(0).integers(0, 256, (n - n // 2, 3, 96, 96), dtype=np.uint8)
    return STL10Data(labelled, labelled, unlabeled)


def folder_data(root: Path, n: int, size: int, gpu_augment: bool, workers: int) -> FolderData:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        path = root / f"{i}.jpg"
        if not path.exists():
            Image.fromarray(rng.integers(0, 256, (size + 8, size + 16, 3), dtype=np.uint8)).save(path, quality=90)
        samples.append((str(path), i % 10))
    if gpu_augment:
        train_t, augment = imagenet_device_augment(size)
    else:
        train_t, augment = imagenet_train_transform(size), lambda x, *rest: normalise(x)
    return FolderData("folder", samples, samples, 10, train_t, imagenet_eval_transform(size), size,
                      num_workers=workers, device_augment=augment, device_normalize=normalise)


# ---------------------------------------------------------------- one row
def count(device: torch.device, data, config: Config, warmup: int, steps: int, rank: int = 0,
          world_size: int = 1, trainer_hook: Optional[Callable] = None) -> Dict[str, float]:
    """Syncs per step of the data and of the training step, over ``steps`` steps after ``warmup``."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    system = build_system(config, data.in_channels, data.num_classes, device)
    if trainer_hook is not None:
        system = trainer_hook(system)
    trainer = SVITrainer(system, config, steps_per_epoch=data.steps_per_epoch(config.batch_size))
    if world_size > 1:
        trainer.world_size = world_size  # the data-parallel path of loss_and_grads
    batches = iter(data.train_batches(config.batch_size, 0, 0, device, rank=rank, world_size=world_size)
                   if world_size > 1 else data.train_batches(config.batch_size, 0, 0, device))
    data_syncs = step_syncs = 0
    for i in range(warmup + steps):
        with SyncCount(device) as made:
            batch = next(batches)
        with SyncCount(device) as stepped:
            trainer.step(*batch, num_images=data.num_train)
        if i >= warmup:
            data_syncs, step_syncs = data_syncs + made.value, step_syncs + stepped.value
    return dict(data=data_syncs / steps, step=step_syncs / steps)


def synchronised_batchnorm(system):
    system.encoder = distributed.convert_batchnorm(system.encoder, next(system.parameters()).device)
    return system


def one_process_group(device: torch.device, tmp: Path) -> None:
    """A process group of one (NCCL on CUDA, gloo on the CPU) in which the data-parallel code path runs."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = dict(device_id=torch.device("cuda", torch.cuda.current_device())) if device.type == "cuda" else {}
    dist.init_process_group(backend, init_method=f"file://{tmp / 'store'}", rank=0, world_size=1, **kwargs)
    distributed.is_distributed = lambda: True  # world size 1, but the collectives and the flat all-reduce run


def run(args) -> List[dict]:
    device = resolve_device(args.device)
    set_backends(device)
    pyro.enable_validation(False)
    small = dict(width=args.width, hidden_dim=args.hidden_dim, feature_dim=args.feature_dim,
                 batch_size=args.batch_size)
    if device.type == "cuda":
        small.update(backbone="resnet18", cifar_stem=True)
    n = args.batch_size * (args.warmup + args.steps)
    rows = []
    memory = memory_data(n, args.size)
    bayesncl = Config(**small, **METHODS["bayesncl"]).resolved()
    for name in args.methods.split(","):
        if name not in METHODS:
            raise SystemExit(f"--methods: unknown {name!r}; expected some of: {', '.join(METHODS)}")
        overrides = METHODS[name]
        rows.append(dict(path=f"in-memory data, {name}",
                         **count(device, memory, Config(**small, **overrides).resolved(), args.warmup, args.steps)))
    rows.append(dict(path="STL-10 (labelled + unlabeled pool), bayesncl",
                     **count(device, stl10_data(n), bayesncl, args.warmup, args.steps)))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for gpu_augment in (True, False):
            folder = folder_data(tmp, n, args.size, gpu_augment, args.workers)
            label = "--gpu-augment (crop in workers, colour on device)" if gpu_augment else "all in workers, uint8"
            rows.append(dict(path=f"folder, {label}, bayesncl", **count(device, folder, bayesncl, args.warmup,
                                                                          args.steps)))
            folder.close()
        one_process_group(device, tmp)
        try:
            config = Config(**dict(small, batch_size=2 * args.batch_size), **METHODS["bayesncl"]).resolved()
            rows.append(dict(path="torchrun path (rank 0 of 2 shards; GlobalBatchNorm, all-reduce), bayesncl",
                             **count(device, memory_data(2 * n, args.size), config, args.warmup, args.steps,
                                     rank=0, world_size=2, trainer_hook=synchronised_batchnorm)))
        finally:
            distributed.cleanup()
    return rows


def report(rows: List[dict], device: torch.device) -> bool:
    how = ("torch.cuda.set_sync_debug_mode" if device.type == "cuda"
           else "calls that would wait on CUDA (CPU: blocking host-to-device copies not counted)")
    print(f"host-device synchronisations per step on {device}, counted with {how}")
    print(f"| {'path':<78} | data | step | ok |")
    print(f"|{'-' * 80}|------|------|----|")
    ok = True
    for row in rows:
        good = row["data"] == 0 and row["step"] <= 1
        ok &= good
        print(f"| {row['path']:<78} | {row['data']:4.1f} | {row['step']:4.1f} | {'yes' if good else 'NO':<2} |")
    print("expected: 0 for the data, 1 for the step (the ELBO's value)")
    print(f"syncs per step: data at most {max(r['data'] for r in rows):g}, step at most "
          f"{max(r['step'] for r in rows):g} ({len(rows)} paths)")
    return ok


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--size", type=int, default=32, help="image size of the in-memory and folder data")
    p.add_argument("--width", type=int, default=8, help="small_resnet width (CPU; CUDA uses resnet18)")
    p.add_argument("--hidden-dim", type=int, default=64)
    p.add_argument("--feature-dim", type=int, default=32)
    p.add_argument("--methods", default=",".join(METHODS), help="rows of in-memory data, by name (comma-separated)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="loader workers of the folder rows (at least 1: the "
                   "workers' own per-image work is not the training process's)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    device = resolve_device(args.device)
    return 0 if report(run(args), device) else 1


def cli(argv=None) -> int:
    return main(argv)
