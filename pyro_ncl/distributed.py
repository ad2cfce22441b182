"""Data-parallel training over processes started by ``torchrun`` (one process per GPU, or several on a CPU).

    torchrun --nproc_per_node=G experiments/run_svi.py --batch-size B ...

What stays equal to one process with the same global batch B (up to floating-point rounding):

* **Data.** Every process builds the same global batch of B images for a step (same order, same views) and takes
  its contiguous shard of b = B/G of them (``pyro_ncl.data.base.local_train_batches``); B % G != 0 is refused.
* **Objective.** The encoder runs on the local 2b views; the guide computes the gates of the local views; the
  model gathers the gated normalised z of every process *with gradient* (``gather_with_grad``) into the global
  layout (view 1 of ranks 0..G−1, then view 2) and each process scores the contrastive loss of its own 2b anchor
  rows against all 2B views (``likelihood.per_view``). The views plate is subsampled to the local views, so its
  scale is 2N/(2b) = G · 2N/(2B); the contrastive factor is 2N · mean over the local rows, also G × this
  process's share of the global loss. Each process's objective is thus G × its share; the backward of the
  gather sums the gradient that every process's loss sends to a process's z, and ``average_gradients`` then
  takes the mean of the parameter gradients over the processes: G · (Σ of shares)/G = the single-process
  gradient. (An explicit flat all-reduce after ``loss_and_grads``, not ``DistributedDataParallel``: the gate
  head is used inside the Pyro guide, outside any wrapped forward; the all-reduce does not overlap the backward.)
  The host waits for the device once per step: ``loss_and_grads`` keeps the ELBO's value on the device and the
  all-reduced loss, statistics and gradient flags are read back together (one ``tolist``).
* **BatchNorm.** With G > 1 the encoder's BatchNorm layers become synchronised (``GlobalBatchNorm`` below, on
  every device: torch's ``SyncBatchNorm`` needs a GPU and reads the per-process counts back to the host in every
  layer, a host-device synchronisation each): statistics over all 2B views, as one process computes them, and
  the same running statistics.
* **Logged values.** The loss and the step statistics are averaged over the processes (each is a mean over
  equally many local views): the global values.
* **Outputs.** Rank 0 alone writes config.json, log.csv, checkpoints, metrics.json and loss.png, and evaluates
  while the other ranks wait at a barrier. A checkpoint holds ``rng_ranks`` (every rank's random state, gathered
  with ``all_gather_object`` when it is written; one entry in one process) and ``world_size``; on ``--resume``
  every rank loads the checkpoint and restores its own entry, so a resumed run continues exactly. Resuming with
  another number of processes gives the same batches but other gate noise (a warning says so).

What differs: the gate noise. Each process draws its own (seeded per rank, ``seed_rank``), so a run with G
processes samples other (equally distributed) gates than a run with one; likewise a global latent such as the
``beta_bernoulli`` inclusion rates is sampled once per process (the mean over processes stays an unbiased ELBO
gradient, not the single-process draw). Refused with G > 1: likelihoods without
``per_view`` (SimLAP), score-function guides (their downstream cost would be the local factor only) and the
single global gate (sampled independently per process).
"""
from __future__ import annotations

import datetime
import os
import random
import socket
import sys
import time
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import pyro
import torch
import torch.distributed as dist
import torch.nn as nn
from pyro.infer.util import torch_backward
from pyro.ops.provenance import extract_provenance, track_provenance

from pyro_ncl.backends import to_device
from pyro_ncl.data.base import shard_size

DEFAULT_TIMEOUT_MINUTES = 120  # non-main ranks wait at a barrier while rank 0 evaluates


# ---------------------------------------------------------------- who am I
def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0 (before the process group exists: RANK from torchrun's environment, so that errors raised early
    are printed once)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


# ---------------------------------------------------------------- set-up and tear-down
def setup(device: torch.device) -> torch.device:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT): gloo on the CPU, nccl on CUDA (each process on cuda:LOCAL_RANK). Returns this process's device.
    Without torchrun's environment (WORLD_SIZE unset or 1) nothing happens and ``device`` is returned as is."""
    size = env_world_size()
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return _local_device(device) if size > 1 else device
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    device = _local_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    minutes = float(os.environ.get("PYRO_NCL_DIST_TIMEOUT_MINUTES", DEFAULT_TIMEOUT_MINUTES))
    kwargs = dict(device_id=device) if device.type == "cuda" else {}
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=minutes), **kwargs)
    return device


def _local_device(device: torch.device) -> torch.device:
    if device.type != "cuda":
        return device
    local = local_rank()
    if device.index is not None and device.index != local:
        raise ValueError(f"--device {device} under torchrun: each process uses cuda:LOCAL_RANK (here cuda:{local}); "
                         f"pass --device cuda or auto")
    if local >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) visible")
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that is free now (for MASTER_PORT of processes spawned on this machine)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def setup_local(rank: int, world_size: int, port: int, device: torch.device = torch.device("cpu")) -> torch.device:
    """``setup`` for process ``rank`` of ``world_size`` processes started on this machine without torchrun (e.g. by
    ``torch.multiprocessing.spawn``, with ``port`` from ``free_port``): torchrun's environment is set first."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    return setup(device)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def seed_rank(seed: int) -> int:
    """Seed Python, NumPy, torch and Pyro with a seed of its own per rank (the gate noise of the processes must
    be independent; the networks are built before, from the common seed). Returns the seed used."""
    value = (seed * 1_000_003 + 7_919 * (rank() + 1)) % (2 ** 32)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    pyro.set_rng_seed(value)
    return value


# ---------------------------------------------------------------- collectives
def _collective_with_grad(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply a differentiable collective to ``x``, keeping Pyro's provenance (TraceGraph_ELBO wraps the values
    of sample sites and what is computed from them in ``ProvenanceTensor``; an autograd ``Function`` applied to
    such a subclass loses the graph, so the collective runs on the plain tensor and the provenance is put back)."""
    value, provenance = extract_provenance(x)
    with warnings.catch_warnings():  # torch.distributed.nn.functional is deprecated in favour of functional
        warnings.simplefilter("ignore", FutureWarning)  # collectives, which carry no gradient of all_reduce
        out = fn(value)
    return track_provenance(out, provenance) if provenance else out


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` of every process along dim 0 (rank order), differentiably: the backward sums the
    gradients that every process sends to this process's ``x``. Identity without a process group."""
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather
    return _collective_with_grad(lambda v: torch.cat(all_gather(v.contiguous()), dim=0), x)


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over the processes, differentiably (identity without a process group)."""
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_reduce
    return _collective_with_grad(lambda v: all_reduce(v, op=dist.ReduceOp.SUM), x)


def gather_views(z: torch.Tensor) -> torch.Tensor:
    """Local views z [2b, K] (rows i, i + b: the two views of local image i) → the global batch [2B, K] in the
    single-process layout: view 1 of ranks 0..G−1, then view 2 (rows j, j + B: the two views of global image j)."""
    if not is_distributed():
        return z
    two_b = z.shape[0]
    gathered = gather_with_grad(z.reshape(2, two_b // 2, *z.shape[1:]))      # [2G, b, K]: rank-major
    g = gathered.shape[0] // 2
    return gathered.reshape(g, 2, two_b // 2, *z.shape[1:]).transpose(0, 1).reshape(g * two_b, *z.shape[1:])


def local_view_rows(local_images: int, device=None) -> torch.Tensor:
    """[2b] rows of this process's views in the global layout of ``gather_views``."""
    b, total = local_images, local_images * world_size()
    first = rank() * b + torch.arange(b, device=device)
    return torch.cat([first, first + total])


def loss_and_grads(elbo, model, guide, *args, **kwargs) -> torch.Tensor:
    """``elbo.loss_and_grads`` (a ``TraceGraph_ELBO``) with the loss left on the device as a 0-dim tensor, for
    ``average_gradients`` to read back with the other all-reduced values (Pyro's own reads it at once: a second
    wait for the device per step)."""
    value, surrogate_loss = elbo._loss_and_surrogate_loss(model, guide, args, kwargs)
    torch_backward(surrogate_loss, retain_graph=elbo.retain_graph)
    return -torch.as_tensor(value).detach()


def average_gradients(parameters: Iterable[torch.nn.Parameter], loss: Any,
                      stats: Dict[str, Any]) -> Tuple[float, Dict[str, float]]:
    """Mean over the processes of every parameter's gradient, of the loss and of the step statistics (floats or
    0-dim tensors, e.g. ``loss_and_grads``'s loss and ``ContrastiveSystem.step_values``: no wait for the device
    before the all-reduce), in one flat all-reduce; returned as floats, read back in one ``tolist`` with the
    gradient flags (the step's one wait for the device). A parameter without a gradient on every process keeps
    ``grad = None`` (as a single process would leave it for the optimiser); one with a gradient on some processes
    only gets the mean over all (the missing ones count as zero). Without a process group: ``loss`` and ``stats``
    as given."""
    if not is_distributed():
        return loss, stats
    params = list(parameters)
    device = params[0].device if params else torch.device("cpu")
    dtype = params[0].dtype if params else torch.float32
    keys = sorted(stats)
    pieces = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype) for p in params]
    presence = to_device(torch.tensor([p.grad is not None for p in params], dtype=dtype), device)
    scalars = torch.stack([_device_scalar(value, device) for value in [loss] + [stats[k] for k in keys]]).to(dtype)
    flat = torch.cat(pieces + [presence, scalars])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = sum(piece.numel() for piece in pieces)
    tail = flat[offset:].double().tolist()  # gradient flags, loss and statistics: the one read-back
    present, values = tail[:len(params)], tail[len(params):]
    offset = 0
    for p, flag in zip(params, present):
        n = p.numel()
        if flag > 0:
            value = flat[offset:offset + n].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = value.clone()
            else:
                p.grad.copy_(value)
        offset += n
    return values[0], dict(zip(keys, values[1:]))


def _device_scalar(value: Any, device: torch.device) -> torch.Tensor:
    """A float or a 0-dim tensor → 0-dim float64 on ``device`` (a number by a non-blocking copy)."""
    if isinstance(value, torch.Tensor):
        return to_device(value.detach(), device).to(torch.float64).reshape(())
    return to_device(torch.tensor(float(value), dtype=torch.float64), device)


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers of rank ``src`` to every process (they are built from the same seed; this
    makes the equality explicit)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src)


def all_gather_objects(obj: Any) -> List[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every process ([obj] without a process group)."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def main_first(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and share its result with every process; an exception on rank 0 is raised on
    every process as ``ValueError`` with the same message (so no rank waits forever for a failed rank 0)."""
    if not is_distributed():
        return fn()
    payload = [None, None]
    if is_main():
        try:
            payload = [fn(), None]
        except Exception as err:  # shared, then re-raised below on every rank
            payload = [None, err]
    dist.broadcast_object_list(payload, src=0)
    if payload[1] is not None:
        if is_main():
            raise payload[1]
        raise ValueError(str(payload[1]))
    return payload[0]


def report_error(message: str, grace_seconds: float = 5.0) -> None:
    """Print a one-line ``error: ...`` once for errors that every process raises alike (bad settings, missing
    data, a refused checkpoint, a non-finite all-reduced loss): rank 0 prints at once; another rank first waits
    ``grace_seconds`` (torchrun stops it as soon as rank 0 exits with the error) and prints only if it is still
    running, i.e. when the error was its own."""
    if is_main():
        print(f"error: {message}", file=sys.stderr)
        return
    time.sleep(grace_seconds)
    print(f"error (rank {int(os.environ.get('RANK', rank()))}): {message}", file=sys.stderr)


# ---------------------------------------------------------------- what G > 1 supports
def check_supported(config, likelihood_cls=None, guide_cls=None, size: Optional[int] = None,
                    prior_cls=None) -> None:
    """One-line ValueError for a run that data parallelism cannot make equal to one process."""
    size = env_world_size() if size is None else size
    if size <= 1:
        return
    if getattr(prior_cls, "batch_coupled", False):
        raise ValueError(f"--prior {config.prior} couples the gates of the whole batch, of which each of the "
                         f"{size} processes sees only its shard; run it in one process")
    shard_size(config.batch_size, size)  # B % G != 0 is refused
    if likelihood_cls is not None and not hasattr(likelihood_cls, "per_view"):
        raise ValueError(f"--likelihood {config.likelihood} has no per-view form (per_view), which {size} "
                         f"processes need to share its negatives; run it in one process")
    if guide_cls is not None and getattr(guide_cls, "value_kind", None) is not None:
        if getattr(guide_cls, "single_process_reason", None):
            raise ValueError(f"--guide {config.guide} {guide_cls.single_process_reason}; run it in one process")
        if not getattr(guide_cls, "reparameterized", True):
            raise ValueError(f"--guide {config.guide} uses score-function gradients, whose cost would be this "
                             f"process's share of the contrastive loss only; run it in one process")
        if getattr(getattr(guide_cls, "scope", None), "name", "view") == "global":
            raise ValueError(f"--guide {config.guide} samples one global gate, which {size} processes would sample "
                             f"independently; run it in one process")


# ---------------------------------------------------------------- synchronised BatchNorm
class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the inputs of every process together (a CPU-capable
    ``SyncBatchNorm``: mean, then variance, each summed over the processes by a differentiable all-reduce).
    Same parameters, buffers and state_dict keys as ``nn.BatchNorm*d``; in eval mode it is plain BatchNorm."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    @torch.compiler.disable  # the differentiable collectives run eagerly inside a compiled encoder
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        use_batch_stats = self.training or self.running_mean is None
        if not (use_batch_stats and is_distributed()):
            return super().forward(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.new_full((1,), x.numel() // x.shape[1])  # a fill on the device, not a copy from the host
        sums = all_reduce_with_grad(torch.cat([x.sum(dims), count]))
        total = sums[-1].detach()
        mean = sums[:-1] / total
        centred = x - mean.view(shape)
        var = all_reduce_with_grad(centred.pow(2).sum(dims)) / total
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                unbiased = var.detach() * (total / (total - 1).clamp_min(1))
                self.running_mean.mul_(1 - momentum).add_(mean.detach().to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
        return out.to(input.dtype)


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``module`` replaced by a ``GlobalBatchNorm`` synchronised over the processes (a no-op in
    one process), on any ``device``; parameters and buffers are kept (the same tensors)."""
    if not is_distributed():
        return module
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats, device=None, dtype=None)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _convert(child))
    return module
