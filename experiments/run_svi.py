#!/usr/bin/env python
"""Train a contrastive method as a Pyro program with SVI (TraceGraph_ELBO), then evaluate it on the test split.

    python experiments/run_svi.py                              # BayesNCL on Fashion-MNIST (README: timings)
    python experiments/run_svi.py --method ncl --out runs/ncl
    python experiments/run_svi.py --dataset imagenet100 --data-root /data/imagenet --backbone resnet18 ...
    torchrun --nproc_per_node=4 experiments/run_svi.py --batch-size 1024 ...   # 4 processes, 256 images each

Writes to --out: config.json, log.csv, checkpoint.pt, metrics.json, loss.png (the list of a run's outputs:
pyro_ncl.run_folder.OUTPUTS). Bad input: one line on stderr, exit status 2, before anything is written. SIGTERM: a
checkpoint, how to resume, exit status 143.
Progress goes to stderr: a bar on a terminal, otherwise a line every 30 s with the ETA (--quiet: none);
TensorBoard event files beside log.csv (--no-tensorboard: none).
"""
from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import pyro

from pyro_ncl import backends, distributed
from pyro_ncl.checkpoint import CheckpointError, load_latest
from pyro_ncl.config import (Config, build_parser, config_from_args, config_from_run, dataset_options, os_error_line,
                             save_config)
from pyro_ncl.data import DatasetNotFound, load_dataset
from pyro_ncl.evaluation import evaluate
from pyro_ncl.plots import plot_loss_curve
from pyro_ncl.run_folder import clear_outputs, outputs_in, write_metrics
from pyro_ncl.runtime import Runtime, Terminated
from pyro_ncl.system import accelerate, build_system, check_parts
from pyro_ncl.train import NonFiniteLoss, Stopped, train
from pyro_ncl.progress import format_duration
from pyro_ncl.tensorboard import write_final

SCRIPT = Path(__file__)


def parser():
    return build_parser(description=__doc__.split("\n")[0])


def settings(args) -> Config:
    """Every setting, checked before anything is opened or written: the command line (over ``--preset``) or, with
    ``--resume``, the run's own config.json; types, ranges, registered names, the combination of parts; and an
    ``--out`` that holds an earlier run's outputs without ``--overwrite``."""
    config = (resume_config(args) if args.resume else config_from_args(args)).resolved().validate()
    check_parts(config)
    if not config.resume:
        refuse_earlier_run(config)
    return config


def resume_config(args) -> Config:
    """``--resume DIR``: the run's own settings (flags that would change them are refused)."""
    run_dir = Path(args.resume)
    explicit = sorted(k for k, v in vars(args).items() if v is not None and k not in ("resume", "device", "quiet"))
    if explicit:
        raise ValueError(f"--resume uses the settings saved in {run_dir / 'config.json'}; drop "
                         + ", ".join("--" + k.replace("_", "-") for k in explicit))
    saved = config_from_run(run_dir, unknown="raise", label=f"--resume {run_dir}")
    return dataclasses.replace(saved, resume=str(run_dir), out=str(run_dir), device=args.device or saved.device,
                               quiet=saved.quiet if args.quiet is None else args.quiet)


def refuse_earlier_run(config: Config) -> None:
    """An ``--out`` holding an earlier run's outputs needs ``--overwrite``; one that is a file is refused."""
    if Path(config.out).exists() and not Path(config.out).is_dir():
        raise ValueError(f"--out {config.out} is a file; expected a folder for the run")
    existing = outputs_in(Path(config.out))
    if existing and not config.overwrite:
        raise ValueError(f"--out {config.out} already holds results ({', '.join(p.name for p in existing)}); "
                         f"pass --overwrite to replace them or choose another --out")


def open_data(config: Config):
    """The dataset, and the settings that depend on its size, checked before anything is written."""
    data = load_dataset(config.dataset, config.data_root, subset=config.subset, num_workers=config.num_workers,
                        **dataset_options(config))
    data.steps_per_epoch(config.batch_size)
    evaluated = min(data.num_train, config.eval_subset or data.num_train)
    if config.knn_k > evaluated:
        raise ValueError(f"--knn-k {config.knn_k} is larger than the {evaluated} training images the evaluation "
                         f"uses as neighbours")
    return data


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


def main(args) -> dict:
    """Check every setting, open the data, take the run folder, train, evaluate. Under torchrun (WORLD_SIZE > 1)
    every process trains on its shard of each global batch; rank 0 alone writes config.json, log.csv,
    checkpoints, metrics.json and loss.png, and evaluates while the others wait."""
    config = settings(args)
    with Runtime(config) as rt:
        config = backends.configure(config, rt.device)  # cuDNN/TF32, auto workers and --gpu-augment (in config.json)
        data = open_data(config)
        rt.seed()
        system = rt.replicate(build_system(config, data.in_channels, data.num_classes, rt.device))
        accelerate(system, config.amp, config.channels_last, config.compile)
        rt.seed_processes()  # independent gate noise per process
        out = rt.claim(config.out)  # locked until the run ends
        state = begin(rt, config, out)
        processes = f", {rt.world_size} processes" if rt.world_size > 1 else ""
        rt.print(f"{config.method}: prior={config.prior} guide={config.guide} likelihood={config.likelihood} "
                 f"non_neg={config.non_neg} | {config.dataset} ({data.num_train} train images) on {rt.device}"
                 f"{processes} → {out}")
        with rt.stoppable():
            summary = train(system, data, config, out, rt.device, resume=state, should_stop=rt.stop_requested)
        return finish(rt, system, data, config, out, summary)


def begin(rt: Runtime, config: Config, out: Path) -> Optional[dict]:
    """``--resume``: the last usable checkpoint (every process loads it), checked against the settings. A new run:
    an earlier run's outputs refused or removed (``--overwrite``) and config.json written, by rank 0."""
    if not config.resume:
        rt.on_main(lambda: start_run_folder(config, out))
        return None
    state = load_latest(out)
    check_resumable(state, config)
    rt.print(f"resuming {out} at epoch {state['epoch'] + 1}, step {state['step']}")
    return state


def finish(rt: Runtime, system, data, config: Config, out: Path, summary: dict) -> dict:
    """Rank 0 evaluates on the test split and writes metrics.json (NaN as null) and loss.png while the other
    processes wait; returns the metrics ({} on the others)."""
    if not rt.main:
        rt.barrier()
        return {}
    if not config.quiet:
        print(f"trained in {format_duration(summary['train_seconds'])}; evaluating", file=sys.stderr, flush=True)
    start = time.perf_counter()
    metrics = evaluate(system, data, batch_size=config.eval_batch_size, device=rt.device,
                       probe_epochs=config.probe_epochs, knn_k=config.knn_k, seed=config.seed,
                       limit=config.eval_subset)
    metrics.update(summary, eval_seconds=time.perf_counter() - start)
    print(write_metrics(out / "metrics.json", metrics))
    plot_loss_curve(out / "log.csv", out / "loss.png")
    write_final(out, config, metrics, summary["steps"])
    rt.barrier()
    return metrics


def resume_hint(args) -> str:
    out = args.resume or args.out or Config.out
    launcher = "torchrun [the same options]" if distributed.env_world_size() > 1 else "python"
    return f"resume with: {launcher} {SCRIPT} --resume {out}"


def cli(argv=None) -> int:
    """Parse, run, and turn bad input into one line on stderr with exit status 2 (no traceback); SIGTERM into a
    checkpoint, a line that says how to resume, and exit status 143."""
    args = parser().parse_args(argv)
    pyro.enable_validation(False)
    warnings.filterwarnings("ignore", message="Encountered NaN")  # reported by NonFiniteLoss, with the term
    try:
        main(args)
    except (ValueError, DatasetNotFound, CheckpointError, NonFiniteLoss) as err:
        distributed.report_error(str(err))  # under torchrun: one line, from rank 0
        return 2
    except OSError as err:  # a full disk, a file that cannot be read or written
        distributed.report_error(os_error_line(err))
        return 2
    except (Stopped, Terminated) as err:
        if distributed.is_main():  # under torchrun every process stops; rank 0 says so
            what = str(err) if isinstance(err, Terminated) else f"SIGTERM: {err}"
            hint = "nothing to resume" if "no checkpoint" in what else resume_hint(args)
            print(f"{what}; {hint}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        if distributed.is_main():
            print(f"interrupted; {resume_hint(args)} (from its last checkpoint)", file=sys.stderr)
        return 130
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
