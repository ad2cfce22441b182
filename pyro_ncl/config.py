"""Every setting in one dataclass; the argparse parser and YAML presets are built from it.

Precedence: dataclass defaults < ``--method`` preset (prior/guide/likelihood/non-negativity names) < ``--preset``
YAML < flags given explicitly on the command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

PRESET_DIR = Path(__file__).resolve().parent.parent / "experiments" / "presets"
DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

# --method: a row of part names. Explicit --prior/--guide/--likelihood/--non-neg override it.
METHODS: Dict[str, Dict[str, str]] = {
    "cl": dict(prior="none", guide="none", likelihood="nt_xent", non_neg="none"),
    "ncl": dict(prior="none", guide="none", likelihood="nt_xent", non_neg="relu"),
    "bayesncl": dict(prior="bernoulli", guide="relaxed_st", likelihood="nt_xent", non_neg="relu"),
    "tricl": dict(prior="none", guide="none", likelihood="tricl", non_neg="none"),
    "simlap": dict(prior="none", guide="none", likelihood="simlap", non_neg="none"),
    "bcl": dict(prior="none", guide="none", likelihood="bcl", non_neg="none"),
}


def _opt(help: str, **kw) -> Any:
    """A dataclass field with its command-line help (and optional argparse extras in ``kw``)."""
    default = kw.pop("default")
    return field(default=default, metadata=dict(help=help, **kw))


@dataclass
class Config:
    # data
    dataset: str = _opt("dataset name", default="fashion-mnist")
    data_root: Optional[str] = _opt("dataset folder (default: the dataset's usual place, e.g. "
                                    f"{DEFAULT_FASHION_MNIST_ROOT} for fashion-mnist)", default=None)
    subset: Optional[int] = _opt("train on the first N training images only", default=None)
    num_workers: int = _opt("data-loader worker processes (file-based datasets)", default=0)
    image_size: Optional[int] = _opt("imagenet100: crop size in px (evaluation resizes to size·256/224)", default=None)
    download: bool = _opt("cifar10/cifar100/stl10: download into --data-root first (only when asked)", default=False)
    skip_bad_images: bool = _opt("file datasets: skip and count unreadable images instead of stopping", default=False)
    gpu_augment: bool = _opt("imagenet100: crop in the loader workers, colour jitter/grayscale/blur in batches on the "
                             "training device (GPU)", default=False)
    spurious_correlation: Optional[float] = _opt("scenes: probability that an image's background is its class's "
                                                 "own (0: independent)", default=None)
    # method: a preset of part names, each overridable
    method: str = _opt("method preset: a row of (prior, guide, likelihood, non-negativity)", default="bayesncl")
    prior: Optional[str] = _opt("gate prior (default: the method's)", default=None)
    guide: Optional[str] = _opt("gate guide (default: the method's)", default=None)
    likelihood: Optional[str] = _opt("contrastive likelihood (default: the method's)", default=None)
    non_neg: Optional[str] = _opt("non-negativity of z (default: the method's)", default=None)
    # encoder
    backbone: str = _opt("backbone network", default="small_resnet")
    width: int = _opt("base width of small_resnet (features = 8·width)", default=16)
    cifar_stem: bool = _opt("torchvision ResNets: 3×3 stride-1 stem without max-pool (for 28–96 px)", default=True)
    hidden_dim: int = _opt("hidden width of the projector and the gate head", default=512)
    feature_dim: int = _opt("dimension K of z and of the gate", default=128)
    # objective
    temperature: float = _opt("NT-Xent temperature τ", default=0.2)
    prior_prob: float = _opt("π of the Bernoulli gate prior (open probability)", default=0.8)
    kl_weight: float = _opt("β: weight of the gate KL per view, relative to the mean contrastive loss",
                            default=3e-5)
    gate_temperature: float = _opt("temperature T of the relaxed gate sample", default=1.0)
    beta_concentration: float = _opt("beta_bernoulli prior: concentration c of the Beta(cπ, c(1 − π)) hyperprior",
                                     default=2.0)
    baseline: str = _opt("bernoulli (score-function) guide: variance-reduction baseline: none | decaying | neural",
                         default="decaying")
    gate_grad_to_backbone: bool = _opt("let gate-head gradients reach the backbone (authors: off)", default=False)
    # likelihood-specific settings
    bcl_alpha: float = _opt("BCL: location α ∈ [0.5, 1] (debiases false negatives)", default=0.9)
    bcl_beta: float = _opt("BCL: concentration β ∈ [0.5, 1] (hardness; 0.5 = unbiased weights)", default=0.5)
    bcl_class_prior: float = _opt("BCL: class prior τ⁺ (probability that a negative shares the class)", default=0.1)
    tricl_decorrelation: float = _opt("triCL: weight of the decorrelation penalty mean((ZᵀZ/N − I)²)", default=1.0)
    simlap_gate_penalty: float = _opt("SimLAP: weight of the gate penalty mean(g(1 − g)) pushing gates to 0/1",
                                      default=0.1)
    # optimisation
    epochs: int = _opt("training epochs", default=5)
    batch_size: int = _opt("images per batch (2× views)", default=256)
    lr: float = _opt("SGD learning rate of the encoder", default=0.05)
    gate_lr: float = _opt("SGD learning rate of the gate head", default=0.1)
    momentum: float = _opt("SGD momentum", default=0.9)
    weight_decay: float = _opt("SGD weight decay", default=1e-4)
    warmup_epochs: float = _opt("linear warm-up length (epochs) before the cosine decay", default=0.5)
    seed: int = _opt("random seed", default=0)
    device: str = _opt("auto | cpu | cuda | cuda:N", default="auto")
    # speed (the objective is unchanged; see README "Multiple GPUs / processes" for torchrun)
    amp: str = _opt("mixed precision of the encoder: none | bf16 (autocast of the encoder only; the gate head, "
                    "the distributions and the loss stay fp32; allowed on the CPU too, where it is rarely faster)",
                    default="none")
    channels_last: bool = _opt("channels-last memory format for the encoder's images and weights", default=False)
    compile: bool = _opt("torch.compile the encoder (needs a C++ compiler on the CPU; the first steps are slow)",
                         default=False)
    # evaluation and output
    eval_subset: Optional[int] = _opt("evaluate on the first N images of each split only (quick checks)",
                                      default=None)
    probe_epochs: int = _opt("epochs of the linear probes at the end", default=30)
    knn_k: int = _opt("neighbours of the kNN classifier", default=20)
    eval_batch_size: int = _opt("batch size for feature extraction", default=1024)
    log_every: int = _opt("write a CSV log row (and TensorBoard scalars) every N steps", default=10)
    quiet: bool = _opt("no progress bar or progress lines while training", default=False)
    tensorboard: Optional[bool] = _opt("write TensorBoard event files to --out (default: yes when the tensorboard "
                                       "package is installed; --tensorboard: required, --no-tensorboard: never)",
                                       default=None)
    checkpoint_every: int = _opt("also checkpoint every N steps (0: only at each epoch's end)", default=100)
    out: str = _opt("output folder of the run", default="runs/default")
    overwrite: bool = _opt("replace the outputs of an earlier run in --out", default=False)
    resume: Optional[str] = _opt("continue the run in this folder from its last checkpoint, exactly as if never "
                                 "stopped (its own settings are used)", default=None)

    def resolved(self) -> "Config":
        """Fill prior/guide/likelihood/non_neg from the method preset where not given."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of: {', '.join(sorted(METHODS))}")
        parts = {k: getattr(self, k) if getattr(self, k) is not None else v for k, v in METHODS[self.method].items()}
        return dataclasses.replace(self, **parts)

    def validate(self) -> "Config":
        """One-line errors for values no part could accept."""
        checks = [(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
                  (self.batch_size >= 2, f"--batch-size must be at least 2 (each image's views need negatives), "
                                         f"got {self.batch_size}"),
                  (self.feature_dim >= 1, f"--feature-dim must be at least 1, got {self.feature_dim}"),
                  (0.0 < self.prior_prob < 1.0, f"--prior-prob must lie in (0, 1), got {self.prior_prob}"),
                  (self.temperature > 0, f"--temperature must be > 0, got {self.temperature}"),
                  (self.gate_temperature > 0, f"--gate-temperature must be > 0, got {self.gate_temperature}"),
                  (self.kl_weight >= 0, f"--kl-weight must be >= 0, got {self.kl_weight}"),
                  (self.lr > 0 and self.gate_lr > 0, f"learning rates must be > 0, got {self.lr}, {self.gate_lr}"),
                  (self.subset is None or self.subset >= 2, f"--subset must be at least 2 images, got {self.subset}"),
                  (self.log_every >= 1, f"--log-every must be at least 1, got {self.log_every}"),
                  (self.checkpoint_every >= 0, f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        check_amp(self.amp)
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_NAMES = {f.name for f in fields(Config)}
AMP_MODES = ("none", "bf16")


def check_amp(amp: str) -> None:
    """The one check of ``--amp`` (``Config.validate`` before a run, ``system.accelerate`` for direct calls)."""
    if amp not in AMP_MODES:
        raise ValueError(f"--amp must be none or bf16, got {amp!r} (fp16 would need loss scaling, which this "
                         f"trainer does not do)")


DATASET_OPTIONS = ("image_size", "download", "skip_bad_images", "gpu_augment", "spurious_correlation")
# settings that change neither what a run learns nor how it is scored: where and how it runs, logs and saves
BOOKKEEPING = ("out", "device", "overwrite", "resume", "data_root", "download", "num_workers", "log_every",
               "checkpoint_every", "eval_batch_size", "channels_last", "compile", "quiet", "tensorboard")


def dataset_options(config: Config) -> Dict[str, Any]:
    """The dataset-specific settings that were given (a dataset refuses options it does not take, by name)."""
    return {k: getattr(config, k) for k in DATASET_OPTIONS if getattr(config, k) not in (None, False)}


def load_preset(name_or_path: str) -> Dict[str, Any]:
    """A YAML preset by name (``experiments/presets/NAME.yaml``) or path; keys are Config field names."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ValueError(f"preset {name_or_path!r} not found at {path}; known presets: {', '.join(known) or 'none'}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"preset {path} does not parse as YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ValueError(f"preset {path} must be a mapping of setting: value, got {type(values).__name__}")
    unknown = sorted(set(values) - FIELD_NAMES - {"description"})
    if unknown:
        raise ValueError(f"preset {path} has unknown settings: {', '.join(unknown)}")
    values.pop("description", None)
    return values


def build_parser(choices: Optional[Dict[str, list]] = None, description: str = "") -> argparse.ArgumentParser:
    """argparse from the Config fields: ``--kebab-case`` flags, booleans as ``--flag/--no-flag``; ``choices`` maps
    field names to the registered names listed in ``--help``. Defaults are None so that explicit flags are known."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", default=None, help="YAML of settings from experiments/presets/ (name or path)")
    choices = choices or {}
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        if f.name in choices:
            help_text += f"; one of: {', '.join(choices[f.name])}"
        help_text += f" (default: {f.default})"
        if f.type in ("bool", bool, "Optional[bool]"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(str(f.type).replace("Optional[", "").rstrip("]"), str)
            parser.add_argument(flag, type=kind, default=None, help=help_text, metavar=f.name.upper())
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults < preset < explicit flags."""
    values: Dict[str, Any] = {}
    if getattr(args, "preset", None):
        values.update(load_preset(args.preset))
    values.update({k: v for k, v in vars(args).items() if k in FIELD_NAMES and v is not None})
    return Config(**values)


def read_run_config(run_dir: Path) -> Dict[str, Any]:
    """The settings a run saved in its ``config.json``; a one-line ValueError when missing or unparsable."""
    path = Path(run_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{run_dir} has no config.json (is it a run folder?)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} does not parse ({err.msg} at line {err.lineno})") from None


def config_from_run(run_dir: Path, unknown: str = "raise", label: Optional[str] = None) -> Config:
    """The ``Config`` a run saved in its ``config.json`` (not resolved). Settings this version does not know:
    ``unknown="raise"``: a one-line ValueError (naming the run as ``label``, default its folder); ``"warn"``: a
    warning, and they are left out (e.g. a run written by another version of the code)."""
    if unknown not in ("raise", "warn"):
        raise ValueError(f"unknown must be 'raise' or 'warn', got {unknown!r}")
    values = read_run_config(run_dir)
    extra = sorted(set(values) - FIELD_NAMES)
    if extra and unknown == "raise":
        raise ValueError(f"{label or run_dir}: config.json has unknown settings {', '.join(extra)}")
    if extra:
        warnings.warn(f"{Path(run_dir) / 'config.json'}: ignoring unknown settings {', '.join(extra)}", stacklevel=2)
    return Config(**{k: v for k, v in values.items() if k in FIELD_NAMES})


def save_config(config: Config, path: Path) -> None:
    path.write_text(json.dumps(config.to_dict(), indent=2))
