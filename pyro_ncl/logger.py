"""Everything a run reports while it trains, behind one interface for the training loop.

    log = TrainingLog(out_dir, config, data, system, steps_per_epoch, device, start_step, elapsed)
    for batch in log.epoch(batches, epoch, step_in_epoch):
        loss = trainer.step(...)
        log.step(trainer, epoch, loss)     # log.csv row every --log-every steps, progress, TensorBoard scalars
    log.epoch_end(trainer, epoch, loss)    # progress line, TensorBoard gate figures (gated methods)
    log.close()

Only rank 0 writes (and prints). A step's statistics (contrastive term, gate KL, open gates) live on the training
device: they are read, in one go, only when a log row or a progress line is written, never in the other steps.
"""
from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Iterable

from pyro_ncl import distributed, tensorboard
from pyro_ncl.config import Config
from pyro_ncl.data.base import DataBundle
from pyro_ncl.monitor import GateMonitor
from pyro_ncl.progress import RunClock, make_progress
from pyro_ncl.system import ContrastiveSystem

# gate_entropy and budget: the budgeted gates' posterior entropy per view and k_t (while k_t falls, the gate KL
# falls with the schedule: for one π it is −H − k_t log π − (K − k_t) log(1 − π), and only −H is learned)
LOG_FIELDS = ["step", "epoch", "loss", "contrastive", "gate_kl", "gate_entropy", "budget", "open_gates", "dead_dims",
              "lr", "images_per_s"]


def truncate_log(path: Path, last_step: int) -> None:
    """Drop log rows written after the checkpoint we resume from (they will be written again)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= last_step]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


class TrainingLog:
    """``log.csv`` (a row every ``config.log_every`` steps and at step 1), progress on stderr (unless
    ``config.quiet`` or ``progress=False``) and TensorBoard event files (``config.tensorboard``) for a run in
    ``out_dir`` continuing at ``start_step`` (0, or a resumed checkpoint's step, after ``elapsed`` seconds)."""

    def __init__(self, out_dir: Path, config: Config, data: DataBundle, system: ContrastiveSystem,
                 steps_per_epoch: int, device, start_step: int = 0, elapsed: float = 0.0, progress: bool = True):
        self.config, self.system = config, system
        self.main = distributed.is_main()
        wanted = tensorboard.enabled(config.tensorboard, warn=self.main)  # in every process: an error stops them all
        self.tensorboard = tensorboard.TensorBoardLog(out_dir, purge_step=start_step + 1 if start_step else None) \
            if self.main and wanted else None
        self.monitor = GateMonitor(data, device, config.eval_batch_size) \
            if self.tensorboard is not None and system.gated else None
        path = out_dir / "log.csv"
        if self.main and start_step:
            truncate_log(path, start_step)
        self.file = open(path, "a" if start_step else "w", newline="") if self.main else open(os.devnull, "w")
        self.csv = csv.DictWriter(self.file, LOG_FIELDS)
        if self.main and not start_step:
            self.csv.writeheader()
        now = time.perf_counter()
        self.clock = RunClock(config.epochs * steps_per_epoch, start_step, elapsed, now)
        self.progress = make_progress(progress and self.main and not config.quiet, self.clock, config.epochs,
                                      config.batch_size)
        self.steps_per_epoch = steps_per_epoch
        self.tick = (start_step, now)  # (step, time) of the last row: images/s between rows

    def epoch(self, batches: Iterable, epoch: int, step_in_epoch: int) -> Iterable:
        """The epoch's batches (through a tqdm bar on a terminal). Images/s leave out the time between epochs."""
        self.tick = (epoch * self.steps_per_epoch + step_in_epoch, time.perf_counter())
        return self.progress.epoch(batches, epoch, step_in_epoch, self.steps_per_epoch)

    def step(self, trainer, epoch: int, loss: float) -> None:
        """After an optimiser step: a log row when due (every ``log_every`` steps and at step 1), a progress line
        when due; the step's statistics are read from the device only then."""
        step, now = trainer.step_count, time.perf_counter()
        self.clock.tick(step, now)
        row_due = step % self.config.log_every == 0 or step == 1
        line_due = self.progress.wants_line(step, now)
        if not (row_due or line_due):
            return
        values = dict(loss=loss, **trainer.step_stats())
        if row_due:
            last_step, last_time = self.tick
            row = dict(step=step, epoch=epoch, lr=trainer.scheduler.get_last_lr()[0],
                       images_per_s=self.config.batch_size * (step - last_step) / max(now - last_time, 1e-9),
                       **values)
            self.csv.writerow({k: row.get(k, "") for k in LOG_FIELDS})
            self.file.flush()
            if self.tensorboard is not None:
                self.tensorboard.scalars(step, {k: row[k] for k in LOG_FIELDS if k in row})
            self.progress.logged(step, epoch, values, now)
            self.tick = (step, now)
        if line_due:
            self.progress.step_line(step, epoch, values, now)

    def epoch_end(self, trainer, epoch: int, loss: float) -> None:
        """The epoch's closing progress line (with the last step's ``loss`` and statistics) and TensorBoard's gate
        figures."""
        step = trainer.step_count
        if self.progress.prints_lines:
            self.progress.epoch_end(step, epoch, dict(loss=loss, **trainer.step_stats()), time.perf_counter())
        if self.monitor is not None:
            snapshot = self.monitor.snapshot(self.system)
            self.tensorboard.gates(step, snapshot["probs"], snapshot["class_frequency"])

    def close(self) -> None:
        self.progress.close()
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()

    def __enter__(self) -> "TrainingLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
