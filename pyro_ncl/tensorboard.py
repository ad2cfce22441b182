"""TensorBoard event files beside ``log.csv`` in a run's folder (``tensorboard --logdir runs`` shows every run).

    train/loss, train/contrastive, train/gate_kl, train/open_gates, train/lr, train/images_per_s
        the rows of log.csv, every --log-every steps (written from the rows: no extra work in the step)
    gates/probability (histogram), gates/class_open_frequency (figure), gates/open_fraction
        gated methods, at each epoch's end, from a fixed sample of training images in eval mode
        (``pyro_ncl.monitor``)
    metrics/<name> and the run's settings as hparams (the HPARAMS tab), when the run has been evaluated

``torch.utils.tensorboard`` is imported only when a writer is made: without the tensorboard package a run that
asks for it (``--tensorboard``) stops with one line, and a run with the default setting says so once and goes on.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from pyro_ncl.config import BOOKKEEPING, Config

EVENT_FILES = "events.out.tfevents.*"


def _summary_writer():
    """torch's ``SummaryWriter`` class, or None when it cannot be imported (no tensorboard package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


def _missing() -> str:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"torch.utils.tensorboard cannot be imported ({reason}): pip install tensorboard"
    return "tensorboard is available"


def enabled(setting: Optional[bool], warn: bool = True) -> bool:
    """Whether a run writes TensorBoard logs. ``setting``: ``--tensorboard`` (True: a one-line ValueError when the
    package is missing), ``--no-tensorboard`` (False), or the default None: yes when the package is installed,
    else not (with a warning when ``warn``)."""
    if setting is False:
        return False
    if _summary_writer() is not None:
        return True
    if setting:
        raise ValueError(f"--tensorboard: {_missing()}, or pass --no-tensorboard")
    if warn:
        warnings.warn(f"no TensorBoard logs: {_missing()}; --no-tensorboard silences this", stacklevel=2)
    return False


def hparams_of(config: Config) -> Dict[str, Any]:
    """The settings that change what a run learns or how it is scored (bookkeeping left out), as TensorBoard
    hparams (None → "none")."""
    return {k: ("none" if v is None else v) for k, v in dataclasses.asdict(config).items() if k not in BOOKKEEPING}


class TensorBoardLog:
    """A ``SummaryWriter`` on ``out_dir``. ``purge_step``: on resume, the first step the run will write again;
    TensorBoard hides what the interrupted run had written from there on."""

    def __init__(self, out_dir: Path, purge_step: Optional[int] = None):
        writer_class = _summary_writer()
        if writer_class is None:
            raise ValueError(f"TensorBoard logs in {out_dir}: {_missing()}")
        self.writer = writer_class(log_dir=str(out_dir), purge_step=purge_step)

    def scalars(self, step: int, row: Dict[str, Any], prefix: str = "train") -> None:
        """Every numeric entry of ``row`` (a log.csv row; empty entries skipped) as ``prefix/name``."""
        for name, value in row.items():
            if name not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{name}", value, step)
        self.writer.flush()

    def gates(self, step: int, probs: torch.Tensor, class_frequency: torch.Tensor) -> None:
        """probs [N, K]: q(m_d = 1 | x) of the sample; class_frequency [C, K]: fraction of each class's images
        whose test-time gate 1[a > 0] is open."""
        from pyro_ncl.plots import gate_frequency_figure

        self.writer.add_histogram("gates/probability", probs.float().flatten(), step)
        self.writer.add_scalar("gates/open_fraction", float((probs > 0.5).float().mean()), step)
        self.writer.add_figure("gates/class_open_frequency", gate_frequency_figure(
            class_frequency, title=f"gates open per class, training sample, step {step}"), step)
        self.writer.flush()

    def hparams(self, config: Config, metrics: Dict[str, Any], step: int) -> None:
        """The final metrics as ``metrics/<name>`` scalars at ``step`` and the run's settings as hparams."""
        from torch.utils.tensorboard.summary import hparams

        values = {f"metrics/{k}": float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        for summary in hparams(hparams_of(config), values):
            self.writer.file_writer.add_summary(summary, step)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def write_final(out_dir: Path, config: Config, metrics: Dict[str, Any], step: int) -> None:
    """The evaluated run's metrics and settings (``TensorBoardLog.hparams``) into its folder, when it writes
    TensorBoard logs."""
    if config.tensorboard is False or _summary_writer() is None:  # a missing package was reported at the start
        return
    log = TensorBoardLog(out_dir)
    try:
        log.hparams(config, metrics, step)
    finally:
        log.close()


def run_dir_name(name: str) -> str:
    """A folder name for a TensorBoard run: ``/``, whitespace and other awkward characters become ``_``."""
    return re.sub(r"[^\w.=+,:-]+", "_", name).strip("_") or "run"


def link_runs(logdir: Path, runs: Dict[str, Path]) -> int:
    """Make ``logdir`` a TensorBoard log folder of the given runs, ``{name: run folder}``: ``logdir/name/`` holds
    links to (or, where links are not possible, copies of) the run's event files, so that ``tensorboard --logdir
    logdir`` shows them side by side under these names. Links from an earlier call are replaced. Returns the
    number of runs that have event files."""
    logdir = Path(logdir)
    if logdir.exists():  # only what an earlier call made: links (or copied event files) and their folders
        for path in sorted(logdir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_symlink() or (path.is_file() and path.match(EVENT_FILES)):
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    linked = 0
    for name, run in runs.items():
        events = sorted(Path(run).glob(EVENT_FILES))
        if not events:
            continue
        folder = logdir / name
        folder.mkdir(parents=True, exist_ok=True)
        for event in events:
            try:
                os.symlink(event.resolve(), folder / event.name)
            except OSError:
                shutil.copyfile(event, folder / event.name)
        linked += 1
    return linked
