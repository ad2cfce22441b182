"""The SVI loop: the guide's ELBO (TraceGraph_ELBO unless the guide names another) ``loss_and_grads`` on the
shared encoded batch, then a plain torch SGD step with a linear warm-up + cosine schedule. Nothing here is
method-specific."""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import pyro
import pyro.poutine as poutine
import torch

from pyro_ncl import distributed
from pyro_ncl.batch import EncodedBatch
from pyro_ncl.checkpoint import gather_rng_states, restore_training_state, save_checkpoint, training_state
from pyro_ncl.config import Config
from pyro_ncl.data.base import DataBundle, local_train_batches
from pyro_ncl.logger import TrainingLog
from pyro_ncl.system import ContrastiveSystem


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA but no GPU is available; use --device cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at a step: linear from 0 over the warm-up, then cosine to 0."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


class NonFiniteLoss(RuntimeError):
    pass


class Stopped(RuntimeError):
    """Training stopped on request (``should_stop``: SIGTERM) after writing a checkpoint."""


class SVITrainer:
    """One SVI step: encode both views once, ``loss_and_grads`` of the model/guide scaled to a per-view objective
    (the ELBO divided by the 2N views of the dataset), an optimiser step and a schedule step. ``should_stop``:
    polled each step; ``stop_requested`` is then True on every process as soon as one was asked to stop (the flag
    rides on the gradient all-reduce, so all processes stop after the same step)."""

    def __init__(self, system: ContrastiveSystem, config: Config, steps_per_epoch: int,
                 should_stop: Optional[Callable[[], bool]] = None):
        self.system, self.config = system, config
        self.should_stop, self.stop_requested = should_stop or (lambda: False), False
        self.elbo = system.guide.make_elbo()  # TraceGraph_ELBO unless the guide brings its own estimator
        self.optimizer = torch.optim.SGD(system.parameter_groups(config.lr, config.gate_lr, config.weight_decay),
                                         momentum=config.momentum)
        total = config.epochs * steps_per_epoch
        warmup = min(total, max(1, round(config.warmup_epochs * steps_per_epoch)))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(total, warmup))
        self.kl_warmup_steps = round(config.kl_warmup_epochs * steps_per_epoch)
        self.steps_per_epoch = steps_per_epoch
        self.step_count = 0
        self.world_size = distributed.world_size()
        self._params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self._reduced_stats: Optional[Dict[str, float]] = None

    def objective(self, batch: EncodedBatch):
        """Model and guide scaled by 1/(2N): the loss is the negative ELBO per view of the dataset."""
        scale = 1.0 / batch.dataset_views
        return poutine.scale(self.system.model.model, scale), poutine.scale(self.system.guide.guide, scale)

    def loss_and_grads(self, x1, x2, y, index, num_images: int) -> float:
        """The loss per view and its gradients in ``.grad`` (no optimiser step). Over G processes (each with its
        shard of the global batch): the loss, the step statistics and every gradient are averaged over the
        processes in one all-reduce, which makes them those of one process with the whole global batch (see
        ``pyro_ncl.distributed``)."""
        self.system.train()
        batch = self.system.encode(x1, x2, index, num_images, y)
        model, guide = self.objective(batch)
        if self.world_size > 1:  # the loss stays on the device until the all-reduce: one wait per step
            loss = distributed.loss_and_grads(self.elbo, model, guide, batch)
            values = dict(self.system.step_values(), stop_requested=float(self.should_stop()))
            loss, self._reduced_stats = distributed.average_gradients(self._params, loss, values)
            self.stop_requested = self._reduced_stats.pop("stop_requested") > 0
            return loss
        self.stop_requested = self.should_stop()
        return self.elbo.loss_and_grads(model, guide, batch)

    def step_stats(self) -> Dict[str, float]:
        """The last step's diagnostics (averaged over the processes when there are several)."""
        return dict(self._reduced_stats) if self._reduced_stats is not None else self.system.step_stats()

    def kl_factor(self) -> float:
        """The gate term's warm-up factor at this step: (step + 1) / warm-up steps, then 1 (never 0)."""
        return min(1.0, (self.step_count + 1) / self.kl_warmup_steps) if self.kl_warmup_steps else 1.0

    def step(self, x1, x2, y, index, num_images: int) -> float:
        self.system.scale_gate_term(self.kl_factor())
        self.system.set_progress(self.step_count / self.steps_per_epoch)
        loss = self.loss_and_grads(x1, x2, y, index, num_images)
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"the objective became {loss} at step {self.step_count}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step_count += 1
        return loss


def _nonfinite_terms(stats: Dict[str, float]) -> str:
    bad = [name for name, value in stats.items() if not math.isfinite(value)]
    return ", ".join(bad) or "the total (every logged term is finite)"


def train(system: ContrastiveSystem, data: DataBundle, config: Config, out_dir: Path, device: torch.device,
          resume: Optional[dict] = None, progress: bool = True,
          should_stop: Optional[Callable[[], bool]] = None) -> Dict[str, float]:
    """Train for ``config.epochs``; write ``checkpoint.pt`` (every ``checkpoint_every`` steps and at each epoch's
    end, atomically, the previous one kept as ``checkpoint.prev.pt``), and through ``TrainingLog`` ``log.csv`` (a
    row every ``log_every`` steps), progress on stderr (``progress`` and not ``config.quiet``) and TensorBoard
    events. ``resume``: a state from ``checkpoint.training_state`` to continue from exactly (same batches, same
    random draws). ``should_stop`` (e.g. SIGTERM received): checkpoint after the current step and raise
    ``Stopped``. Returns a summary with the training wall time."""
    steps_per_epoch = data.steps_per_epoch(config.batch_size)
    trainer = SVITrainer(system, config, steps_per_epoch, should_stop)
    rank, world_size, main = distributed.rank(), distributed.world_size(), distributed.is_main()
    epoch, step_in_epoch, elapsed, loss = 0, 0, 0.0, math.nan
    if resume is not None:
        epoch, step_in_epoch, elapsed = restore_training_state(resume, system, trainer, config.seed)
    start = time.perf_counter() - elapsed

    saved_at = [None]

    def checkpoint(epoch_: int, step_: int) -> None:
        saved_at[0] = trainer.step_count
        rng_ranks = gather_rng_states()  # every process takes part; rank 0 writes
        if main:
            save_checkpoint(training_state(system, trainer, config, epoch_, step_, time.perf_counter() - start,
                                           rng_ranks), out_dir / "checkpoint.pt")

    with TrainingLog(out_dir, config, data, system, steps_per_epoch, device, trainer.step_count, elapsed,
                     progress) as log:
        while epoch < config.epochs:
            batches = local_train_batches(data, config.batch_size, epoch, config.seed, device,
                                          start_step=step_in_epoch, rank=rank, world_size=world_size)
            for x1, x2, y, index in log.epoch(batches, epoch, step_in_epoch):
                try:
                    loss = trainer.step(x1, x2, y, index, data.num_train)
                except NonFiniteLoss as err:
                    raise NonFiniteLoss(f"{err} (non-finite: {_nonfinite_terms(trainer.step_stats())}); "
                                        f"the last good checkpoint "
                                        f"is {out_dir / 'checkpoint.pt'}") from None
                step_in_epoch += 1
                log.step(trainer, epoch, loss)
                if (config.checkpoint_every and trainer.step_count % config.checkpoint_every == 0
                        and step_in_epoch < steps_per_epoch):  # the epoch's last step: saved just below
                    checkpoint(epoch, step_in_epoch)
                if trainer.stop_requested:
                    if saved_at[0] != trainer.step_count:
                        checkpoint(*((epoch + 1, 0) if step_in_epoch == steps_per_epoch else (epoch, step_in_epoch)))
                    raise Stopped(f"stopped at step {trainer.step_count} of {config.epochs * steps_per_epoch} "
                                  f"(epoch {epoch + 1}); checkpoint written: {out_dir / 'checkpoint.pt'}")
            epoch, step_in_epoch = epoch + 1, 0
            checkpoint(epoch, 0)
            log.epoch_end(trainer, epoch - 1, loss)
    return dict(train_seconds=time.perf_counter() - start, steps=trainer.step_count)
