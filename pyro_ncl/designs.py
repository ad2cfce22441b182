"""Designs of a frontier study (``experiments/frontier_designs.yaml``, ``experiments/learning_curve_designs.yaml``):
per design the run_svi.py settings that define it (``flags``), the setting swept (``knob``: one setting and its
values), ``posthoc: true`` for NCL's features sparsified after training, ``candidate: true`` for the Bayesian designs
that may become the default; and the plan of runs: one job per design × knob value × seed (× training length).

    designs = load_designs(path, ["ncl", "bayesncl"])              # one-line ValueErrors for anything malformed
    designs = override_knobs(designs, ["ncl_topk=4,6"])              # --knob DESIGN=V1,V2
    jobs = plan(designs, seeds=[0, 1, 2], out=Path("runs/x"), lengths=[5, 20, 60])
    requested_config(job["settings"], run_args)                     # the settings run_svi.py will run with
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import yaml

from pyro_ncl.config import BOOKKEEPING, FIELD_NAMES, check_setting


def load_designs(path: Path, names: Optional[List[str]] = None) -> Dict[str, dict]:
    """``{design: {"flags": {...}, "knob": (key, [values]) or None, "posthoc": bool, "candidate": bool}}`` from the
    YAML file, in file order, only ``names`` when given; one-line errors for anything malformed."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"--designs-file {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"--designs-file {path}: expected a mapping of design names, got {type(raw).__name__}")
    designs = {}
    for name, spec in raw.items():
        spec = spec or {}
        unknown = set(spec) - {"flags", "knob", "posthoc", "candidate", "description"}
        if unknown:
            raise ValueError(f"--designs-file {path}: design {name!r} has unknown keys {', '.join(sorted(unknown))}")
        flags = spec.get("flags") or {}
        knob = spec.get("knob")
        if knob is not None and (not isinstance(knob, dict) or len(knob) != 1
                                 or not isinstance(next(iter(knob.values())), list)):
            raise ValueError(f"--designs-file {path}: design {name!r}: knob must be one setting and a list of values")
        for key in [*flags, *(knob or {})]:
            if key not in FIELD_NAMES or key in BOOKKEEPING or key in ("seed", "val_size"):
                raise ValueError(f"--designs-file {path}: design {name!r}: {key!r} is not a method setting of "
                                 f"run_svi.py")
        designs[name] = {"flags": flags, "knob": next(iter(knob.items())) if knob else None,
                         "posthoc": bool(spec.get("posthoc", False)), "candidate": bool(spec.get("candidate", False))}
    if names:
        missing = [n for n in names if n not in designs]
        if missing:
            raise ValueError(f"--designs {', '.join(missing)}: not in {path} (known: {', '.join(designs)})")
        designs = {n: designs[n] for n in names}
    return designs


def override_knobs(designs: Dict[str, dict], overrides: List[str]) -> Dict[str, dict]:
    """``--knob DESIGN=V1,V2`` (each once): DESIGN's knob swept over these values (checked as its setting) instead
    of the file's; one-line errors for a design not selected, one without a knob, or a bad value."""
    designs = {name: dict(design) for name, design in designs.items()}
    seen = set()
    for text in overrides:
        name, sep, values = text.partition("=")
        if not sep or not values.strip():
            raise ValueError(f"--knob must be DESIGN=V1,V2,..., got {text!r}")
        if name not in designs:
            raise ValueError(f"--knob {text}: design {name!r} is not among the designs run ({', '.join(designs)})")
        if name in seen:
            raise ValueError(f"--knob {text}: design {name!r} is given twice")
        seen.add(name)
        if designs[name]["knob"] is None:
            raise ValueError(f"--knob {text}: design {name!r} has no knob in the designs file")
        key = designs[name]["knob"][0]
        try:
            parsed = [check_setting(key, yaml.safe_load(v.strip())) for v in values.split(",")]
        except (ValueError, yaml.YAMLError) as err:
            raise ValueError(f"--knob {text}: {str(err).splitlines()[0]}") from None
        designs[name]["knob"] = (key, parsed)
    return designs


def plan(designs: Dict[str, dict], seeds: List[int], out: Path, lengths: Optional[List[int]] = None) -> List[dict]:
    """One job per design × knob value × seed (× training length, with ``lengths``): its folder
    OUT/runs/DESIGN[/KNOB=VALUE][/epochs=E]/seed=S, run_svi settings and labels; ordered length by length (shortest
    first), then seed by seed, and within a seed knob position by knob position across the designs (every design
    gets its first runs early)."""
    jobs = []
    for epochs in lengths or [None]:
        for name, design in designs.items():
            key, values = design["knob"] or (None, [None])
            for position, value in enumerate(values):
                for seed in seeds:
                    settings = dict(design["flags"], **({key: value} if key else {}),
                                    **({"epochs": epochs} if epochs else {}), seed=seed)
                    folder = (out / "runs" / name / (f"{key}={value}" if key else "")
                              / (f"epochs={epochs}" if epochs else "") / f"seed={seed}")
                    jobs.append({"design": name, "knob": value, "knob_key": key, "seed": seed, "epochs": epochs,
                                 "dir": folder, "settings": settings, "posthoc": design["posthoc"],
                                 "candidate": design["candidate"],
                                 "order": (epochs or 0, seeds.index(seed), position)})
    return sorted(jobs, key=lambda job: job["order"])


def setting_flags(settings: dict) -> List[str]:
    """{"prior_prob": 0.1, "gate_grad_to_backbone": False} → ["--prior-prob=0.1", "--no-gate-grad-to-backbone"]."""
    out = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out.append(f"{flag}={value}")
    return out


def requested_config(settings: dict, run_args: List[str]) -> dict:
    """The resolved settings run_svi.py will run with for ``run_args`` and these settings (what the run's
    config.json must hold); a one-line ValueError for a bad setting."""
    from pyro_ncl.cli import build_parser, config_from_args

    parser = build_parser()
    parser.raise_errors = True
    return config_from_args(parser.parse_args([*run_args, *setting_flags(settings)])).resolved().to_dict()
