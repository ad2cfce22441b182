#!/usr/bin/env python
"""Train a contrastive method as a Pyro program with SVI (TraceGraph_ELBO), then evaluate it on the test split.

    python experiments/run_svi.py                              # BayesNCL on Fashion-MNIST (README: timings)
    python experiments/run_svi.py --method ncl --out runs/ncl
    python experiments/run_svi.py --dataset imagenet100 --data-root /data/imagenet --backbone resnet18 ...
    torchrun --nproc_per_node=4 experiments/run_svi.py --batch-size 1024 ...   # 4 processes, 256 images each

Writes to --out: config.json, log.csv, checkpoint.pt, metrics.json, loss.png, TensorBoard event files.
Progress goes to stderr: a bar on a terminal, otherwise a line every 30 s with the ETA (--quiet: none).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import pyro

from guides import GUIDES
from models import PRIORS
from pyro_ncl import distributed
from pyro_ncl.checkpoint import CheckpointError, load_latest
from pyro_ncl.config import (METHODS, Config, build_parser, config_from_args, config_from_run, dataset_options,
                             save_config)
from pyro_ncl.data import DATASETS, DatasetNotFound, load_dataset
from pyro_ncl.encoders import BACKBONES, NON_NEGATIVITY
from pyro_ncl.evaluation import evaluate
from pyro_ncl.likelihoods import LIKELIHOODS
from pyro_ncl.plots import plot_loss_curve
from pyro_ncl.progress import format_duration
from pyro_ncl.system import accelerate, build_system
from pyro_ncl.tensorboard import EVENT_FILES, write_final
from pyro_ncl.train import NonFiniteLoss, resolve_device, seed_everything, train

RESULT_FILES = ("metrics.json", "checkpoint.pt", "checkpoint.prev.pt", "log.csv")


def parser():
    choices = dict(dataset=DATASETS.names(), method=sorted(METHODS), prior=PRIORS.names(), guide=GUIDES.names(),
                   likelihood=LIKELIHOODS.names(), non_neg=NON_NEGATIVITY.names(), backbone=BACKBONES.names())
    return build_parser(choices, description=__doc__.split("\n")[0])


def prepare_out_dir(config: Config) -> Path:
    """--out, created and checked writable. Results of an earlier run there are refused, or with --overwrite
    removed (so that no checkpoint of that run becomes this run's ``checkpoint.prev.pt``)."""
    out = Path(config.out)
    existing = [name for name in RESULT_FILES if (out / name).exists()] + sorted(p.name for p in out.glob(EVENT_FILES))
    if existing and not config.overwrite:
        raise ValueError(f"--out {out} already holds results ({', '.join(existing)}); "
                         f"pass --overwrite to replace them or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
        for name in existing:
            (out / name).unlink()
    except OSError as err:
        raise ValueError(f"--out {out} is not writable: {err.strerror}") from None
    return out


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


def check_resumable(state: dict, config: Config) -> None:
    """A checkpoint of another method or size is refused by name."""
    saved = state.get("config", {})
    for key in ("method", "prior", "guide", "likelihood", "non_neg", "backbone", "width", "hidden_dim",
                "feature_dim", "dataset"):
        if saved.get(key) != getattr(config, key):
            raise ValueError(f"checkpoint in {config.resume} was made with {key}={saved.get(key)!r}, "
                             f"not {getattr(config, key)!r}")


def _new_run_dir(config: Config) -> Path:
    out = prepare_out_dir(config)
    save_config(config, out / "config.json")
    return out


def main(args) -> dict:
    """Under torchrun (WORLD_SIZE > 1) every process trains on its shard of each global batch; rank 0 alone
    writes config.json, log.csv, checkpoints, metrics.json and loss.png, and evaluates while the others wait."""
    config = (resume_config(args) if args.resume else config_from_args(args)).resolved().validate()
    device = distributed.setup(resolve_device(config.device))
    distributed.check_supported(config, LIKELIHOODS[config.likelihood], GUIDES[config.guide])
    main_process = distributed.is_main()
    data = load_dataset(config.dataset, config.data_root, subset=config.subset, num_workers=config.num_workers,
                        **dataset_options(config))
    data.steps_per_epoch(config.batch_size)  # validates the batch size before anything is written
    seed_everything(config.seed)
    system = build_system(config, data.in_channels, data.num_classes, device)
    distributed.convert_batchnorm(system.encoder, device)  # BatchNorm over the global batch (G > 1 only)
    distributed.broadcast_module(system)
    accelerate(system, config.amp, config.channels_last, config.compile)
    if distributed.is_distributed():
        distributed.seed_rank(config.seed)  # independent gate noise per process
    state = None
    if config.resume:
        out = Path(config.resume)
        state = load_latest(out)  # every process loads the checkpoint
        check_resumable(state, config)
        if main_process:
            print(f"resuming {out} at epoch {state['epoch'] + 1}, step {state['step']}")
    else:
        out = distributed.main_first(lambda: _new_run_dir(config))
    if main_process:
        processes = f", {distributed.world_size()} processes" if distributed.is_distributed() else ""
        print(f"{config.method}: prior={config.prior} guide={config.guide} likelihood={config.likelihood} "
              f"non_neg={config.non_neg} | {config.dataset} ({data.num_train} train images) on {device}{processes} "
              f"→ {out}")
    summary = train(system, data, config, out, device, resume=state)
    if not main_process:
        distributed.barrier()  # rank 0 evaluates and writes the results
        return {}
    if not config.quiet:
        print(f"trained in {format_duration(summary['train_seconds'])}; evaluating", file=sys.stderr, flush=True)
    start = time.perf_counter()
    metrics = evaluate(system, data, batch_size=config.eval_batch_size, device=device,
                       probe_epochs=config.probe_epochs, knn_k=config.knn_k, seed=config.seed,
                       limit=config.eval_subset)
    metrics.update(summary, eval_seconds=time.perf_counter() - start)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_loss_curve(out / "log.csv", out / "loss.png")
    write_final(out, config, metrics, summary["steps"])
    print(json.dumps(metrics, indent=2))
    distributed.barrier()
    return metrics


def cli(argv=None) -> int:
    """Parse, run, and turn bad input into one line on stderr with exit status 2 (no traceback)."""
    args = parser().parse_args(argv)
    pyro.enable_validation(False)
    warnings.filterwarnings("ignore", message="Encountered NaN")  # reported by NonFiniteLoss, with the term
    try:
        main(args)
    except (ValueError, DatasetNotFound, CheckpointError, NonFiniteLoss) as err:
        distributed.report_error(str(err))  # under torchrun: one line, from rank 0
        return 2
    except KeyboardInterrupt:
        if distributed.is_main():
            print("interrupted; resume with --resume from the last checkpoint in --out", file=sys.stderr)
        return 130
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
