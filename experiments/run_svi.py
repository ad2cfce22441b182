#!/usr/bin/env python
"""Train a contrastive method as a Pyro program with SVI (TraceGraph_ELBO), then evaluate it on the test split.

    python experiments/run_svi.py                              # BayesNCL on Fashion-MNIST (README: timings)
    python experiments/run_svi.py --method ncl --out runs/ncl
    python experiments/run_svi.py --dataset imagenet100 --data-root /data/imagenet --backbone resnet18 ...
    torchrun --nproc_per_node=4 experiments/run_svi.py --batch-size 1024 ...   # 4 processes, 256 images each

Writes to --out: config.json, log.csv, checkpoint.pt, metrics.json, loss.png (the list of a run's outputs:
pyro_ncl.run_folder.OUTPUTS). Bad input: one line on stderr, exit status 2, before anything is written. SIGTERM: a
checkpoint, how to resume, exit status 143. The run itself is ``pyro_ncl.experiment.run``: the same from Python,
``pyro_ncl.run(Config(...))``; this script parses the command line into a ``Config`` and reports its errors.
Progress goes to stderr: a bar on a terminal, otherwise a line every 30 s with the ETA (--quiet: none);
TensorBoard event files beside log.csv (--no-tensorboard: none).
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pyro

from pyro_ncl import distributed
from pyro_ncl.checkpoint import CheckpointError
from pyro_ncl.config import Config
from pyro_ncl.cli import build_parser, config_from_args, os_error_line
from pyro_ncl.data import DatasetNotFound
from pyro_ncl.experiment import refuse_earlier_run, resume_settings, run, start_run_folder  # noqa: F401
from pyro_ncl.runtime import Terminated
from pyro_ncl.train import NonFiniteLoss, Stopped

SCRIPT = Path(__file__)


def parser():
    return build_parser(description=__doc__.split("\n")[0])


def settings(args) -> Config:
    """The command line (over ``--preset``) or, with ``--resume``, the run's own config.json, as a ``Config``
    (checked by ``pyro_ncl.experiment.settings`` before anything is opened or written)."""
    return resume_config(args) if args.resume else config_from_args(args)


def resume_config(args) -> Config:
    """``--resume DIR``: the run's own settings (flags that would change them are refused)."""
    run_dir = Path(args.resume)
    explicit = sorted(k for k, v in vars(args).items() if v is not None and k not in ("resume", "device", "quiet"))
    if explicit:
        raise ValueError(f"--resume uses the settings saved in {run_dir / 'config.json'}; drop "
                         + ", ".join("--" + k.replace("_", "-") for k in explicit))
    return resume_settings(run_dir, device=args.device, quiet=args.quiet)


def main(args) -> dict:
    """Check every setting, open the data, take the run folder, train, evaluate (``pyro_ncl.experiment.run``).
    Under torchrun (WORLD_SIZE > 1) every process trains on its shard of each global batch; rank 0 alone writes
    config.json, log.csv, checkpoints, metrics.json and loss.png, and evaluates while the others wait. Returns the
    metrics ({} on the other processes)."""
    return run(settings(args)).metrics


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
