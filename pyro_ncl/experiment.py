"""One run, from Python: settings checked, data opened, run folder taken, training, evaluation, outputs written.

    import pyro_ncl
    from pyro_ncl.config import Config

    run = pyro_ncl.run(Config(dataset="folder", data_root="my_images", epochs=20, out="runs/mine"))
    run.metrics["knn_accuracy"]                 # what metrics.json holds
    run.encode(x)                               # h, z, features (gate, probs) of normalised images x [N, C, S, S]
    pyro_ncl.run(resume="runs/mine")            # continue a stopped run exactly (its own settings)

``experiments/run_svi.py`` is its command-line front (parse → ``Config`` → ``run``), with the same guarantees:
every setting is checked before anything is opened or written (a one-line ``ValueError``), settings that depend on
the data once they are open (still before anything is written), the run folder is locked for the run's life, an
earlier run's outputs are kept unless ``overwrite``, ``resume`` continues from the last checkpoint with the same
batches and random draws, SIGTERM during training checkpoints after the step and raises ``Stopped`` (``Terminated``
outside training), and under torchrun rank 0 alone writes and evaluates. Settings the dataset resolves from its
files (``DataBundle.resolved_options``: a folder's channels and normalisation statistics) and those the device
resolves (``--gpu-augment``) are written into config.json, so that a resumed or reloaded run is exact.
"""
from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Tuple

import pyro

from pyro_ncl import backends, distributed
from pyro_ncl.checkpoint import load_latest
from pyro_ncl.config import Config, FIELD_NAMES, dataset_options
from pyro_ncl.run_folder import config_from_run, save_config
from pyro_ncl.data import load_dataset
from pyro_ncl.data.base import DataBundle
from pyro_ncl.evaluation import evaluate
from pyro_ncl.trained_run import Run
from pyro_ncl.plots import plot_loss_curve
from pyro_ncl.presets import describe_recipe
from pyro_ncl.provenance import provenance
from pyro_ncl.progress import format_duration
from pyro_ncl.run_folder import clear_outputs, outputs_in, read_metrics, write_metrics
from pyro_ncl.runtime import Runtime
from pyro_ncl.system import accelerate, build_system, check_parts
from pyro_ncl.tensorboard import write_final
from pyro_ncl.train import train

__all__ = ["run", "settings", "resume_settings", "refuse_earlier_run", "open_data", "start_run_folder",
           "check_resumable"]


def run(config: Optional[Config] = None, **changes: Any) -> Run:
    """Train and evaluate one run; returns it as an ``trained_run.Run`` (folder, resolved settings, the trained system
    in eval mode, its data, ``metrics``). ``config`` with ``changes`` applied (``run(epochs=1, out=...)`` starts
    from the defaults). With ``resume`` set, the run's saved settings are used, only ``device`` and ``quiet`` taken
    from here. Bad settings or data: a one-line ``ValueError`` before anything is written."""
    config = settings(_with_changes(config, changes))
    with pyro.validation_enabled(False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Encountered NaN")  # reported by NonFiniteLoss, with the term
        warnings.showwarning = _one_line_warning
        with Runtime(config) as rt:
            config = backends.configure(config, rt.device)  # cuDNN/TF32, auto --gpu-augment (in config.json)
            config, data = open_data(config)
            rt.seed()
            system = rt.replicate(build_system(config, data.in_channels, data.num_classes, rt.device))
            accelerate(system, config.amp, config.channels_last, config.compile)
            rt.seed_processes()  # independent gate noise per process
            out = rt.claim(config.out)  # locked until the run ends
            state = begin(rt, config, out)
            processes = f", {rt.world_size} processes" if rt.world_size > 1 else ""
            recipe = describe_recipe(config)
            if recipe:
                rt.print(recipe)
            rt.print(f"{config.method}: prior={config.prior} guide={config.guide} likelihood={config.likelihood} "
                     f"non_neg={config.non_neg} | {config.dataset} ({data.num_train} train images) on {rt.device}"
                     f"{processes} → {out}")
            with rt.stoppable():
                summary = train(system, data, config, out, rt.device, resume=state, should_stop=rt.stop_requested)
            metrics = finish(rt, system, data, config, out, summary)
    return Run(out, config, system.eval(), rt.device, _data=data, metrics=metrics)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning during a run as one line on stderr, ``warning: ...`` (rank 0), without the source line."""
    if distributed.is_main():
        text = str(message).splitlines()[0] if str(message) else category.__name__
        print(f"warning: {text}", file=file or sys.stderr)


def _with_changes(config: Optional[Config], changes: dict) -> Config:
    unknown = sorted(set(changes) - FIELD_NAMES)
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)} (see pyro_ncl.config.Config)")
    if config is not None and not isinstance(config, Config):
        raise ValueError(f"run() takes a pyro_ncl.config.Config, got a {type(config).__name__}")
    return dataclasses.replace(config or Config(), **changes)


def settings(config: Config) -> Config:
    """Every setting, checked before anything is opened or written: with ``resume``, the run's own config.json
    (``resume_settings``); types, ranges, registered names, the combination of parts; and an ``out`` that holds an
    earlier run's outputs without ``overwrite``. The resolved ``Config``."""
    if config.resume:
        config = resume_settings(config.resume, device=config.device, quiet=config.quiet)
    config = config.resolved().validate()
    check_parts(config)
    if not config.resume:
        refuse_earlier_run(config)
    return config


def resume_settings(run_dir, device: Optional[str] = None, quiet: Optional[bool] = None) -> Config:
    """The settings saved in ``run_dir``'s config.json (each checked), to resume it there; ``device`` and ``quiet``
    (None: the saved ones) are the only ones a resumed run may change."""
    run_dir = Path(run_dir)
    saved = config_from_run(run_dir, unknown="raise", label=f"--resume {run_dir}")
    return dataclasses.replace(saved, resume=str(run_dir), out=str(run_dir), device=device or saved.device,
                               quiet=saved.quiet if quiet is None else quiet)


def refuse_earlier_run(config: Config) -> None:
    """An ``--out`` holding an earlier run's outputs needs ``--overwrite``; one that is a file is refused."""
    if Path(config.out).exists() and not Path(config.out).is_dir():
        raise ValueError(f"--out {config.out} is a file; expected a folder for the run")
    existing = outputs_in(Path(config.out))
    if existing and not config.overwrite:
        raise ValueError(f"--out {config.out} already holds results ({', '.join(p.name for p in existing)}); "
                         f"pass --overwrite to replace them or choose another --out")


def open_data(config: Config) -> Tuple[Config, DataBundle]:
    """The dataset, and the settings that depend on it, checked before anything is written: the batch size and
    ``knn_k`` against its size; the settings it resolved (``resolved_options``) put into the returned ``Config``."""
    data = load_dataset(config.dataset, config.data_root, subset=config.subset, num_workers=config.num_workers,
                        **dataset_options(config))
    data.steps_per_epoch(config.batch_size)
    evaluated = min(data.num_eval_train, config.eval_subset or data.num_eval_train)
    if config.knn_k > evaluated:
        raise ValueError(f"--knn-k {config.knn_k} is larger than the {evaluated} training images the evaluation "
                         f"uses as neighbours")
    return dataclasses.replace(config, **data.resolved_options), data


def start_run_folder(config: Config, out: Path) -> None:
    """Under the folder's lock: an earlier run's outputs are refused, or with ``--overwrite`` all removed (so
    that none of them is taken for this run's: a checkpoint as its ``checkpoint.prev.pt``, an old ``eval/``);
    then config.json is written."""
    refuse_earlier_run(config)
    clear_outputs(out)
    save_config(config, out / "config.json")


def check_resumable(state: dict, config: Config) -> None:
    """A checkpoint of another method or size is refused by name."""
    saved = state.get("config", {})
    for key in ("method", "prior", "guide", "likelihood", "non_neg", "backbone", "width", "hidden_dim",
                "feature_dim", "dataset"):
        if saved.get(key) != getattr(config, key):
            raise ValueError(f"checkpoint in {config.resume} was made with {key}={saved.get(key)!r}, "
                             f"not {getattr(config, key)!r}")


def begin(rt: Runtime, config: Config, out: Path) -> Optional[dict]:
    """``resume``: the last usable checkpoint (every process loads it), checked against the settings. A new run:
    an earlier run's outputs refused or removed (``overwrite``) and config.json written, by rank 0."""
    if not config.resume:
        rt.on_main(lambda: start_run_folder(config, out))
        return None
    state = load_latest(out)
    check_resumable(state, config)
    rt.print(f"resuming {out} at epoch {state['epoch'] + 1}, step {state['step']}")
    return state


def finish(rt: Runtime, system, data: DataBundle, config: Config, out: Path, summary: dict) -> dict:
    """Rank 0 evaluates on the evaluated split (``data.eval_split``) and writes metrics.json (NaN as null, also
    printed) and loss.png while the other processes wait; returns the metrics as metrics.json holds them ({} on
    the other processes)."""
    if not rt.main:
        rt.barrier()
        return {}
    if not config.quiet:
        print(f"trained in {format_duration(summary['train_seconds'])}; evaluating", file=sys.stderr, flush=True)
    start = time.perf_counter()
    metrics = evaluate(system, data, batch_size=config.eval_batch_size, device=rt.device,
                       probe_epochs=config.probe_epochs, knn_k=config.knn_k, seed=config.seed,
                       limit=config.eval_subset)
    metrics.update(summary, eval_seconds=time.perf_counter() - start, **provenance())
    print(write_metrics(out / "metrics.json", metrics))
    plot_loss_curve(out / "log.csv", out / "loss.png")
    write_final(out, config, metrics, summary["steps"])
    rt.barrier()
    return read_metrics(out / "metrics.json")
