"""The command line of ``experiments/run_svi.py`` (also ``python -m pyro_ncl.commands.run_svi``, which an installed
copy without the experiments/ folder runs): parse the flags into a ``Config`` (over ``--preset`` and the dataset's
recipe), or read a run's own config.json with ``--resume``, and run it (``pyro_ncl.experiment.run``); bad input as
one line on stderr and exit status 2, SIGTERM as a checkpoint, a line saying how to resume and exit status 143.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pyro

from pyro_ncl import distributed
from pyro_ncl.checkpoint import CheckpointError
from pyro_ncl.cli import build_parser, config_from_args, os_error_line
from pyro_ncl.config import Config
from pyro_ncl.data import DatasetNotFound
from pyro_ncl.experiment import resume_settings, run
from pyro_ncl.runtime import Terminated
from pyro_ncl.train import NonFiniteLoss, Stopped

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "run_svi.py"  # its command-line front


def parser():
    return build_parser(description="Train a contrastive method as a Pyro program with SVI (TraceGraph_ELBO), then "
                                    "evaluate it.")


def cli_settings(args) -> Config:
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


def cli_main(args) -> dict:
    """Check every setting, open the data, take the run folder, train, evaluate (``pyro_ncl.experiment.run``).
    Under torchrun (WORLD_SIZE > 1) every process trains on its shard of each global batch; rank 0 alone writes
    config.json, log.csv, checkpoints, metrics.json and loss.png, and evaluates while the others wait. Returns the
    metrics ({} on the other processes)."""
    return run(cli_settings(args)).metrics


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
        cli_main(args)
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


if __name__ == "__main__":  # python -m pyro_ncl.commands.run_svi [flags]: run_svi.py's, installed or not
    sys.exit(cli())
