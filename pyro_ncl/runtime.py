"""Where and how one run executes, entered once by ``experiments/run_svi.py``'s ``main``:

    with Runtime(config) as rt:              # device; process group under torchrun; SIGTERM handled
        rt.seed()                            # the common seed: every process builds the same networks
        system = rt.replicate(build(...))    # synchronised BatchNorm, rank 0's weights everywhere (G > 1)
        rt.seed_processes()                  # then independent gate noise per process
        out = rt.claim(config.out)           # rank 0 locks the run folder until the run ends
        rt.print("...")                      # rank 0 only
        with rt.stoppable():                 # SIGTERM here: the loop checkpoints after its step and stops
            train(..., should_stop=rt.stop_requested)

Leaving it releases the lock, destroys the process group and restores the SIGTERM handler. SIGTERM (what cluster
schedulers send before they kill) outside ``stoppable`` raises ``Terminated`` at once; inside, it only sets the
flag that ``rt.stop_requested`` reports and the training loop agrees on across processes (``pyro_ncl.train``).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from pyro_ncl import distributed
from pyro_ncl.config import check_setting
from pyro_ncl.run_folder import RunLock
from pyro_ncl.train import resolve_device, seed_everything


class Terminated(Exception):
    """SIGTERM outside training: the run stops where it is; the message says whether and how it can resume."""


class Runtime:
    """Device, process group, seeds, the run folder's lock, SIGTERM and rank-0 printing of one run (a context
    manager; see the module docstring)."""

    def __init__(self, config):
        self.config = config
        self.device: Optional[torch.device] = None
        self.out: Optional[Path] = None
        self._lock: Optional[RunLock] = None
        self._stop = False
        self._deferred = False
        self._previous_handler: Any = None

    # ------------------------------------------------------------ enter / exit
    def __enter__(self) -> "Runtime":
        from guides import GUIDES
        from models import PRIORS
        from pyro_ncl.likelihoods import LIKELIHOODS
        distributed.check_supported(self.config, LIKELIHOODS[self.config.likelihood], GUIDES[self.config.guide],
                                    prior_cls=PRIORS[self.config.prior])
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            self.device = distributed.setup(local_device(self.config.device))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        distributed.cleanup()

    # ------------------------------------------------------------ processes
    @property
    def main(self) -> bool:
        """Rank 0 (the one process without torchrun)."""
        return distributed.is_main()

    @property
    def world_size(self) -> int:
        return distributed.world_size()

    def print(self, *args, **kwargs) -> None:
        if self.main:
            print(*args, **kwargs)

    def barrier(self) -> None:
        distributed.barrier()

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0, its result (or its error, as ValueError) on every process."""
        return distributed.main_first(fn)

    # ------------------------------------------------------------ seeds and replicas
    def seed(self) -> None:
        """The common seed (Python, NumPy, torch, Pyro): every process builds the same networks from it."""
        seed_everything(self.config.seed)

    def seed_processes(self) -> None:
        """A seed of its own per process (G > 1), for independent gate noise; nothing in one process."""
        if distributed.is_distributed():
            distributed.seed_rank(self.config.seed)

    def replicate(self, system):
        """G > 1: the encoder's BatchNorm over the global batch, rank 0's parameters and buffers on every process
        (a ``ContrastiveSystem``, returned)."""
        distributed.convert_batchnorm(system.encoder, self.device)
        distributed.broadcast_module(system)
        return system

    # ------------------------------------------------------------ the run folder
    def claim(self, folder) -> Path:
        """Lock ``folder`` (created if needed) for the rest of the run, on rank 0; a folder in use by another run
        is a ValueError naming it, on every process."""
        folder = Path(folder)

        def lock() -> None:
            self._lock = RunLock(folder).acquire()
        self.on_main(lock)
        self.out = folder
        return folder

    # ------------------------------------------------------------ SIGTERM
    def stop_requested(self) -> bool:
        """Whether this process has received SIGTERM."""
        return self._stop

    @contextlib.contextmanager
    def stoppable(self) -> Iterator[None]:
        """Within: SIGTERM only sets ``stop_requested`` (the training loop checkpoints and stops). A SIGTERM that
        arrives after the loop's last check stops the run on leaving."""
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False
        if self._stop:
            raise Terminated(self._where("after training"))

    def _on_sigterm(self, signum, frame) -> None:
        self._stop = True
        if not self._deferred:
            raise Terminated(self._where("before training" if self.out is None else "outside training"))

    def _where(self, when: str) -> str:
        checkpoint = self.out is not None and any((self.out / name).is_file()
                                                  for name in ("checkpoint.pt", "checkpoint.prev.pt"))
        return f"stopped by SIGTERM {when}" + ("" if checkpoint else "; no checkpoint was written yet")


def local_device(name: str) -> torch.device:
    """``--device`` (auto | cpu | cuda | cuda:N) → a device that exists here, else a one-line ValueError."""
    check_setting("device", name)
    device = resolve_device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible "
                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return device
