"""What a user sees while a run trains: a tqdm bar on a terminal, plain progress lines otherwise.

Off a terminal (output to a file, ``nohup``, CI, a notebook's ``!python``) tqdm switches itself off, so
``LineProgress`` prints one line a few steps in (with the expected training time), then at most every
``interval`` seconds within an epoch and at each epoch's end:

    epoch 1/5 · step 7/1170 | loss 5.8123 contrastive 5.8101 gate_kl 0.0734 open_gates 0.812 | 352 img/s |
        elapsed 0:00:12 · ETA 0:33:40 (expected training time 0:33:52, then evaluation)

(one line). The interval is 30 s, or ``PYRO_NCL_PROGRESS_SECONDS`` from the environment. Reading a step's
statistics waits for the device, so the loop asks ``wants_line`` before reading them. ``RunClock`` estimates the
time left from the wall time per step after the first (slow) steps of this process.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Dict, Iterable, Optional, TextIO

from tqdm import tqdm

INTERVAL_ENV = "PYRO_NCL_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0
WARMUP_STEPS = 2  # this process's first steps (allocation, cuDNN autotuning, compilation) are left out of the rate
FIRST_LINE_STEPS = 5  # the first line comes this many steps after the warm-up, with the expected training time
STAT_FORMATS = (("contrastive", ".4f"), ("gate_kl", ".4f"), ("gate_entropy", ".3f"), ("budget", ".0f"),
                ("open_gates", ".3f"), ("dead_dims", ".0f"))  # gate_entropy, budget: exact_k; dead_dims: exact_k_aux


def progress_interval() -> float:
    """Seconds between progress lines within an epoch: ``PYRO_NCL_PROGRESS_SECONDS`` or 30."""
    text = os.environ.get(INTERVAL_ENV)
    if text is None:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"{INTERVAL_ENV} must be a number of seconds >= 0, got {text!r}")
    return value


def format_duration(seconds: float) -> str:
    """H:MM:SS (as tqdm writes times)."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RunClock:
    """Elapsed time and ETA of the whole training run (``total_steps``), started at ``start_step`` after
    ``elapsed`` seconds of earlier sessions (a resumed run). The rate is the wall time per step since the end of
    this process's warm-up (epoch ends and checkpoints included), or since the start while still warming up."""

    def __init__(self, total_steps: int, start_step: int = 0, elapsed: float = 0.0,
                 now: Optional[float] = None):
        self.total_steps, self.start_step = total_steps, start_step
        self.started = time.perf_counter() if now is None else now
        self.before = elapsed
        self.reference: Optional[tuple] = None  # (step, time) at the end of the warm-up

    def tick(self, step: int, now: float) -> None:
        if self.reference is None and step >= self.start_step + WARMUP_STEPS:
            self.reference = (step, now)

    def elapsed(self, now: float) -> float:
        return self.before + now - self.started

    def seconds_per_step(self, step: int, now: float) -> Optional[float]:
        ref_step, ref_time = self.reference or (self.start_step, self.started)
        if step <= ref_step:
            ref_step, ref_time = self.start_step, self.started
        return (now - ref_time) / (step - ref_step) if step > ref_step else None

    def eta(self, step: int, now: float) -> Optional[float]:
        """Seconds until the last training step (None before the first step)."""
        rate = self.seconds_per_step(step, now)
        return None if rate is None else rate * (self.total_steps - step)


class Progress:
    """No output (``--quiet``, the processes other than rank 0). The loop calls ``epoch`` to wrap each epoch's
    batches, ``wants_line(step, now)`` after each step, ``step_line`` with the step's values when it does,
    ``logged`` with the values of each log row, and ``epoch_end`` with the epoch's last values (read only when
    ``prints_lines``)."""

    prints_lines = False

    def __init__(self, clock: RunClock, epochs: int, batch_size: int):
        self.clock, self.epochs, self.batch_size = clock, epochs, batch_size

    def epoch(self, batches: Iterable, epoch: int, step_in_epoch: int, steps_per_epoch: int) -> Iterable:
        return batches

    def wants_line(self, step: int, now: float) -> bool:
        return False

    def step_line(self, step: int, epoch: int, values: Dict[str, float], now: float) -> None:
        pass

    def logged(self, step: int, epoch: int, values: Dict[str, float], now: float) -> None:
        pass

    def epoch_end(self, step: int, epoch: int, values: Optional[Dict[str, float]], now: float) -> None:
        pass

    def close(self) -> None:
        pass


class BarProgress(Progress):
    """tqdm, one bar per epoch; the postfix shows the loss and the run's ETA at each log row."""

    def __init__(self, clock: RunClock, epochs: int, batch_size: int, stream: TextIO):
        super().__init__(clock, epochs, batch_size)
        self.stream, self.bar = stream, None

    def epoch(self, batches, epoch, step_in_epoch, steps_per_epoch):
        self.bar = tqdm(batches, total=steps_per_epoch, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{self.epochs}",
                        leave=False, file=self.stream, dynamic_ncols=True)
        return self.bar

    def logged(self, step, epoch, values, now):
        if self.bar is not None:
            eta = self.clock.eta(step, now)
            self.bar.set_postfix(loss=f"{values['loss']:.4f}", run_eta=format_duration(eta or 0.0))

    def close(self):
        if self.bar is not None:
            self.bar.close()


class LineProgress(Progress):
    """One flushed line at a time on ``stream``: a few steps in, every ``interval`` seconds, at each epoch's end."""

    prints_lines = True

    def __init__(self, clock: RunClock, epochs: int, batch_size: int, stream: TextIO, interval: float):
        super().__init__(clock, epochs, batch_size)
        self.stream, self.interval = stream, interval
        self.first_line_step = clock.start_step + WARMUP_STEPS + FIRST_LINE_STEPS
        self.told_total = False
        self.last = (clock.start_step, clock.started)  # (step, time) of the last line: images/s between lines

    def wants_line(self, step, now):
        if not self.told_total:
            return step >= self.first_line_step
        return now - self.last[1] >= self.interval

    def step_line(self, step, epoch, values, now):
        self._write(f"epoch {epoch + 1}/{self.epochs}", step, values, now)

    def epoch_end(self, step, epoch, values, now):
        self._write(f"epoch {epoch + 1}/{self.epochs} done", step, values, now)

    def _write(self, where: str, step: int, values: Optional[Dict[str, float]], now: float) -> None:
        parts = [f"{where} · step {step}/{self.clock.total_steps}"]
        if values:
            stats = [f"loss {values['loss']:.4f}"] + [f"{name} {values[name]:{fmt}}" for name, fmt in STAT_FORMATS
                                                      if values.get(name) is not None]
            parts.append(" ".join(stats))
        last_step, last_time = self.last
        if step > last_step and now > last_time:
            parts.append(f"{self.batch_size * (step - last_step) / (now - last_time):.0f} img/s")
        timing = f"elapsed {format_duration(self.clock.elapsed(now))}"
        eta = self.clock.eta(step, now)
        if eta is not None and step < self.clock.total_steps:
            timing += f" · ETA {format_duration(eta)}"
            if not self.told_total:
                timing += f" (expected training time {format_duration(self.clock.elapsed(now) + eta)}, " \
                          f"then evaluation)"
        self.told_total = True
        parts.append(timing)
        print(" | ".join(parts), file=self.stream, flush=True)
        self.last = (step, now)


def make_progress(enabled: bool, clock: RunClock, epochs: int, batch_size: int,
                  stream: Optional[TextIO] = None, interval: Optional[float] = None) -> Progress:
    """A tqdm bar when ``stream`` (default stderr) is a terminal, progress lines otherwise, nothing when not
    ``enabled``. ``interval``: seconds between lines (default ``progress_interval()``)."""
    stream = stream or sys.stderr
    if not enabled:
        return Progress(clock, epochs, batch_size)
    if stream.isatty():
        return BarProgress(clock, epochs, batch_size, stream)
    return LineProgress(clock, epochs, batch_size, stream, progress_interval() if interval is None else interval)
