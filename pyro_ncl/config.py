"""Every setting in one dataclass, each with its help and its constraint (``_opt``), checked the same way from every
source (``check_setting``: command line, preset, recipe, a run's config.json); what settings require of each other
(``Config.validate``); the settings that do not change what a run learns (``BOOKKEEPING``), and the comparison of a
saved run's settings with wanted ones (``changed_settings``). The command line is built from it in
``pyro_ncl.cli``, presets and recipes are read in ``pyro_ncl.presets``, a run's config.json in
``pyro_ncl.run_folder``.

Precedence: dataclass defaults < the dataset's recipe < ``--method`` (prior/guide/likelihood/non-negativity names)
< ``--preset`` YAML < flags given explicitly on the command line.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, List, Optional, Tuple

DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

# --method: a row of part names. Explicit --prior/--guide/--likelihood/--non-neg override it.
METHODS: Dict[str, Dict[str, str]] = {
    "cl": dict(prior="none", guide="none", likelihood="nt_xent", non_neg="none"),
    "ncl": dict(prior="none", guide="none", likelihood="nt_xent", non_neg="relu"),
    "bayesncl": dict(prior="bernoulli", guide="exact_k", likelihood="nt_xent", non_neg="relu"),
    "ncl_topk": dict(prior="none", guide="none", likelihood="nt_xent", non_neg="topk"),
    "tricl": dict(prior="none", guide="none", likelihood="tricl", non_neg="none"),
    "simlap": dict(prior="none", guide="none", likelihood="simlap", non_neg="none"),
    "bcl": dict(prior="none", guide="none", likelihood="bcl", non_neg="none"),
}
AMP_MODES = ("none", "bf16")


def _opt(help: str, **kw) -> Any:
    """A dataclass field with its command-line help and its constraint, checked for every source of settings
    (command line, preset, a run's config.json) by ``check_setting``. The type is the annotation (``Optional``:
    None allowed). Constraint keywords: ``ge``/``gt``/``le``/``lt`` (bounds of a number), ``choices`` (a tuple of
    allowed values, or ``"module:REGISTRY"``: the names registered there), ``pattern`` ((regular expression, what
    it means)), ``why`` (said after a bound or a choice), ``noun`` (the word for a choice), ``preset=False``
    (bookkeeping a preset may not set: where results go, which device). Adding a setting with its constraint is
    one line here; every check, message and ``--help`` entry follows from it."""
    default = kw.pop("default")
    return field(default=default, metadata=dict(help=help, **kw))


@dataclass
class Config:
    # data
    dataset: str = _opt("dataset name", default="fashion-mnist", choices="pyro_ncl.data:DATASETS")
    recipe: Optional[str] = _opt("dataset recipe: the training settings a dataset takes unless flags or --preset set "
                                 "them (backbone, projector, image size, batch, epochs, lr: "
                                 "experiments/recipes/NAME.yaml); auto: the dataset's own (imagenet100, cifar10, "
                                 "cifar100, stl10; fashion-mnist, mnist, scenes and folder have none), none: no recipe",
                                 default=None, shown="auto", choices="pyro_ncl.presets:RECIPES")
    data_root: Optional[str] = _opt("dataset folder (default: the dataset's usual place, e.g. "
                                    f"{DEFAULT_FASHION_MNIST_ROOT} for fashion-mnist)", default=None, preset=False)
    subset: Optional[int] = _opt("train on the first N training images only", default=None, ge=2)
    num_workers: Optional[int] = _opt("data-loader worker processes of the folder datasets (imagenet100); auto: on "
                                      "CUDA this process's share of the visible cores less one (at least 1, at "
                                      "most 16), on the CPU 0", default=None, shown="auto", ge=0)
    image_size: Optional[int] = _opt("imagenet100 and folder: crop size in px (imagenet100: 224; folder: 32, the "
                                     "small-image recipe up to 96 px, the ImageNet one above; evaluation resizes to "
                                     "size·256/224 with the ImageNet recipe)", default=None, ge=8)
    download: bool = _opt("cifar10/cifar100/stl10: download into --data-root first (only when asked)", default=False,
                          preset=False)
    skip_bad_images: bool = _opt("file datasets: skip and count unreadable images (folder: also empty class folders, "
                                 "images of classes train/ lacks, symlink loops) instead of stopping", default=False)
    unlabelled_root: Optional[str] = _opt("folder: pre-train on the images under this folder (nested or not, no "
                                          "labels) and evaluate on --data-root's labelled tree", default=None,
                                          preset=False)
    channels: Optional[int] = _opt("folder: channels the images are converted to, 1 (grayscale) or 3 (RGB); auto: 1 "
                                   "when the sampled training images are all grayscale, else 3 (recorded in "
                                   "config.json)", default=None, shown="auto", choices=(1, 3))
    image_mean: Optional[str] = _opt("folder: per-channel mean of the normalisation, comma-separated (auto: computed "
                                     "from up to 1,000 training images and recorded in config.json)", default=None,
                                     shown="auto", pattern=(r"[0-9.]+(,[0-9.]+)*", "comma-separated numbers, e.g. "
                                                            "0.5,0.5,0.5"))
    image_std: Optional[str] = _opt("folder: per-channel standard deviation of the normalisation, comma-separated "
                                    "(auto: computed with --image-mean)", default=None, shown="auto",
                                    pattern=(r"[0-9.]+(,[0-9.]+)*", "comma-separated numbers, e.g. 0.25,0.25,0.25"))
    gpu_augment: Optional[bool] = _opt("imagenet100: crop and flip in the loader workers (uint8 views), colour "
                                       "jitter (no hue term), grayscale, blur and normalisation in batches on the "
                                       "training device; auto: on with CUDA, off on the CPU (where the workers do "
                                       "all of it and also ship uint8 views)", default=None, shown="auto")
    val_size: Optional[int] = _opt("hold out the last N training images as a validation split (fashion-mnist, mnist, "
                                   "cifar10/100, scenes): training and --subset use the images before them, and the "
                                   "end-of-run evaluation scores the validation split (the test split stays unread: "
                                   "choose settings on it, then score the test split once with evaluate.py --split "
                                   "test or frontier.py --final)", default=None, ge=1)
    exclude_classes: Optional[str] = _opt("comma-separated class ids removed from the training images (and the "
                                          "validation split) (fashion-mnist, mnist, cifar10/100, scenes): --subset "
                                          "counts the other classes' images, the evaluation scores the test images "
                                          "of the other classes, and the removed classes' test images are the "
                                          "outlier split (near out-of-distribution inputs for "
                                          "experiments/uncertainty.py)", default=None,
                                          pattern=(r"[0-9]+(,[0-9]+)*", "comma-separated class ids such as 8,9"))
    background_strength: Optional[float] = _opt("scenes: contrast and saturation of the shared backgrounds around "
                                                "mid-grey (1: the full backgrounds; lower makes the item easier to "
                                                "learn than the background)", default=None, ge=0, le=1)
    item_contrast: Optional[float] = _opt("scenes: how far each item's random colour is pulled to white (0: a random "
                                          "colour; 1: white)", default=None, ge=0, le=1)
    spurious_correlation: Optional[float] = _opt("scenes: probability that an image's background is its class's "
                                                 "own (0: independent)", default=None, ge=0, le=1)
    # method: a preset of part names, each overridable
    method: str = _opt("method preset: a row of (prior, guide, likelihood, non-negativity)", default="bayesncl",
                       choices=tuple(METHODS))
    prior: Optional[str] = _opt("gate prior (default: the method's; `rate` is a penalty on each dimension's open "
                                "rate, not part of an ELBO)", default=None, choices="models:PRIORS")
    guide: Optional[str] = _opt("gate guide (default: the method's): exact_k (bayesncl: exactly k = round(π·K) open "
                                "gates per view from an exactly-k conditional Bernoulli posterior on z/s + head(h), "
                                "SIMPLE gradient, exact KL), atmost_k (at most k open gates: the count drawn too, "
                                "so no gate need open on z's zeros), budget_st (Bernoulli gates around each view's "
                                "k-th entry, straight-through), relaxed_st (exact Bernoulli draw on head(h), "
                                "straight-through gradient), relaxed_soft (Concrete masks, with --prior concrete), "
                                "bernoulli (score function, --baseline), disarm (exact Bernoulli, DisARM gradients, "
                                "no relaxation), deterministic (the authors' point estimate), global (one gate for "
                                "all images), image (one gate per image), value and relative (value-aware gates "
                                "reading z)", default=None, choices="guides:GUIDES")
    likelihood: Optional[str] = _opt("contrastive likelihood (default: the method's)", default=None,
                                     choices="pyro_ncl.likelihoods:LIKELIHOODS")
    non_neg: Optional[str] = _opt("non-negativity of z (default: the method's)", default=None,
                                  choices="pyro_ncl.non_negativity:NON_NEGATIVITY")
    # encoder
    backbone: str = _opt("backbone network", default="small_resnet", choices="pyro_ncl.backbones:BACKBONES")
    width: int = _opt("base width of small_resnet (features = 8·width)", default=16, ge=1)
    cifar_stem: bool = _opt("torchvision ResNets: 3×3 stride-1 stem without max-pool (for 28–96 px)", default=True)
    hidden_dim: int = _opt("hidden width of the projector and the gate head", default=512, ge=1)
    feature_dim: int = _opt("dimension K of z and of the gate", default=128, ge=1)
    # objective
    temperature: float = _opt("NT-Xent temperature τ", default=0.2, gt=0)
    prior_prob: float = _opt("π of the Bernoulli gate prior (open probability); the budgeted gates (exact_k, "
                             "budget_st) open k = round(π·K) gates per view (1/32: 4 of 128); the authors' value is "
                             "0.8 (presets)", default=0.03125, gt=0, lt=1)
    kl_weight: float = _opt("β: weight of the gate KL per view, relative to the mean contrastive loss (0: no gate "
                            "term, the gate still sampled); for exact_k it weighs −H(q), the posterior's entropy "
                            "(the authors' value is 3e-5: presets)", default=3e-3, ge=0)
    gate_temperature: float = _opt("temperature T of the relaxed gate sample", default=1.0, gt=0)
    beta_concentration: float = _opt("beta_bernoulli prior: concentration c of the Beta(cπ, c(1 − π)) hyperprior",
                                     default=2.0, gt=0)
    baseline: str = _opt("bernoulli (score-function) guide: variance-reduction baseline: none | decaying | neural",
                         default="decaying", choices=("none", "decaying", "neural"))
    gate_grad_to_backbone: bool = _opt("let the gate's gradients reach the encoder through the features it reads "
                                       "(z and h); on by default for every gated guide (chosen for exact_k on "
                                       "Fashion-MNIST's validation split: frontier design exact_k_bb; the other "
                                       "guides were measured detached), off in the authors' presets "
                                       "(--no-gate-grad-to-backbone)", default=True)
    topk: Optional[int] = _opt("the top-k activation (--method ncl_topk, --non-neg topk): entries of z each view "
                               "keeps (at the end of the curriculum and at test time); default K/32 rounded, at "
                               "least 2 (4 of --feature-dim 128)", default=None,
                               ge=2, why="one kept entry leaves a one-hot feature with no gradient")
    budget_anneal_epochs: Optional[float] = _opt("the top-k activation and the budgeted gates (exact_k, budget_st): "
                                                 "epochs over which the number of kept entries falls from "
                                                 "--budget-start to its final k (default: 40%% of --epochs)",
                                                 default=None, ge=0)
    budget_schedule: str = _opt("the top-k activation and the budgeted gates: how the number of kept entries falls "
                                "from --budget-start to its final k over --budget-anneal-epochs: linear "
                                "(start − (start − k)·f) or geometric (start·(k/start)^f)", default="linear",
                                choices="pyro_ncl.budget:SCHEDULES")
    budget_start: Optional[int] = _opt("the top-k activation and the budgeted gates: entries kept at the start of "
                                       "the anneal; auto: min(K, max(128, 3k)) (every dimension up to K = 128; "
                                       "the exactly-k gate's work grows with it: pyro_ncl/budget.py)", default=None, shown="auto", ge=2)
    aux_weight: float = _opt("exact_k_aux: weight α of the auxiliary top-k term on dead dimensions (CSR's aux-k; "
                             "Gao et al.'s 1/32)", default=0.03125, ge=0)
    aux_dead_steps: int = _opt("exact_k_aux: a dimension is dead once it was in no view's posterior mode for this "
                               "many training batches", default=20, ge=1)
    kl_warmup_epochs: float = _opt("grow the gate term's weight linearly from ≈0 to --kl-weight over this many epochs "
                                   "(0: the full weight from the first step)", default=0.0, ge=0)
    test_gate: str = _opt("gated methods' evaluated features: mode (the posterior's most probable mask: 1[logit > 0] "
                          "for the per-gate Bernoulli guides, the k largest θ for exact_k) | mean (the posterior "
                          "open probability as a weight)", default="mode", choices=("mode", "mean"),
                          noun="test-time gate")
    # likelihood-specific settings
    bcl_alpha: float = _opt("BCL: location α ∈ [0.5, 1] (debiases false negatives)", default=0.9, ge=0.5, le=1)
    bcl_beta: float = _opt("BCL: concentration β ∈ [0.5, 1] (hardness; 0.5 = unbiased weights)", default=0.5,
                           ge=0.5, le=1)
    bcl_class_prior: float = _opt("BCL: class prior τ⁺ (probability that a negative shares the class)", default=0.1,
                                  gt=0, lt=1)
    tricl_decorrelation: float = _opt("triCL: weight of the decorrelation penalty mean((ZᵀZ/N − I)²)", default=1.0,
                                      ge=0)
    simlap_gate_penalty: float = _opt("SimLAP: weight of the gate penalty mean(g(1 − g)) pushing gates to 0/1",
                                      default=0.1, ge=0)
    # optimisation
    epochs: int = _opt("training epochs", default=5, ge=1)
    batch_size: int = _opt("images per batch (2× views)", default=256, ge=2,
                           why="each image's views need negatives")
    lr: float = _opt("SGD learning rate of the encoder", default=0.05, gt=0)
    gate_lr: float = _opt("SGD learning rate of the gate head", default=0.1, gt=0)
    momentum: float = _opt("SGD momentum", default=0.9, ge=0, lt=1)
    weight_decay: float = _opt("SGD weight decay", default=1e-4, ge=0)
    warmup_epochs: float = _opt("linear warm-up length (epochs) before the cosine decay", default=0.5, ge=0)
    seed: int = _opt("random seed", default=0, ge=0, le=2 ** 32 - 1)
    device: str = _opt("auto | cpu | cuda | cuda:N", default="auto", preset=False,
                       pattern=(r"auto|cpu|cuda(:[0-9]+)?", "auto, cpu, cuda or cuda:N"))
    deterministic: bool = _opt("reproducible GPU numerics: cuDNN deterministic algorithms, torch deterministic "
                               "algorithms (warnings for ops without one), no cuDNN benchmark and no TF32; by default "
                               "CUDA runs with cuDNN benchmark on and TF32 allowed for fp32 matmuls and convolutions",
                               default=False)
    # speed (the objective is unchanged; see README "Multiple GPUs / processes" for torchrun)
    amp: str = _opt("mixed precision of the encoder: none | bf16 (autocast of the encoder only; the gate head, "
                    "the distributions and the loss stay fp32; allowed on the CPU too, where it is rarely faster)",
                    default="none", choices=AMP_MODES, noun="mixed-precision mode",
                    why="fp16 would need loss scaling, which this trainer does not do")
    channels_last: bool = _opt("channels-last memory format for the encoder's images and weights", default=False)
    compile: bool = _opt("torch.compile the encoder (needs a C++ compiler on the CPU; the first steps are slow)",
                         default=False)
    # evaluation and output
    eval_subset: Optional[int] = _opt("evaluate on the first N images of each split only (quick checks)",
                                      default=None, ge=1)
    probe_epochs: int = _opt("epochs of the linear probes at the end", default=30, ge=1)
    knn_k: int = _opt("neighbours of the kNN classifier", default=20, ge=1)
    eval_batch_size: int = _opt("batch size for feature extraction", default=1024, ge=1)
    log_every: int = _opt("write a CSV log row (and TensorBoard scalars) every N steps", default=10, ge=1)
    quiet: bool = _opt("no progress bar or progress lines while training", default=False)
    tensorboard: Optional[bool] = _opt("write TensorBoard event files to --out (default: yes when the tensorboard "
                                       "package is installed; --tensorboard: required, --no-tensorboard: never)",
                                       default=None)
    checkpoint_every: int = _opt("also checkpoint every N steps (0: only at each epoch's end)", default=100, ge=0)
    out: str = _opt("output folder of the run", default="runs/default", preset=False)
    overwrite: bool = _opt("replace the outputs of an earlier run in --out", default=False, preset=False)
    resume: Optional[str] = _opt("continue the run in this folder from its last checkpoint, exactly as if never "
                                 "stopped (its own settings are used)", default=None, preset=False)

    def resolved(self) -> "Config":
        """Fill prior/guide/likelihood/non_neg from the method preset where not given."""
        check_setting("method", self.method)
        parts = {k: getattr(self, k) if getattr(self, k) is not None else v for k, v in METHODS[self.method].items()}
        return dataclasses.replace(self, **parts)

    def validate(self) -> "Config":
        """Every setting against its field's type and constraint (``check_setting``, named as its ``--flag``),
        then what settings require of each other. One-line ValueErrors; returns ``self``."""
        for f in fields(self):
            check_setting(f.name, getattr(self, f.name))
        if self.topk is not None and self.topk > self.feature_dim:
            raise ValueError(f"--topk must lie in [2, --feature-dim {self.feature_dim}], got {self.topk}")
        non_neg = self.non_neg or METHODS.get(self.method, {}).get("non_neg")
        if self.topk is not None and non_neg != "topk":
            raise ValueError(f"--topk sets the top-k activation (--method ncl_topk or --non-neg topk), not "
                             f"--non-neg {non_neg}; a budgeted gate opens round(π·K) gates: set --prior-prob")
        guide = self.guide or METHODS.get(self.method, {}).get("guide")
        for name in ("aux_weight", "aux_dead_steps"):
            if guide != "exact_k_aux" and getattr(self, name) != FIELDS[name].default:
                raise ValueError(f"--{name.replace('_', '-')} sets the aux-k term of --guide exact_k_aux, not of "
                                 f"--guide {guide}")
        if self.subset is not None and self.batch_size > self.subset:
            raise ValueError(f"--batch-size {self.batch_size} is larger than --subset {self.subset}")
        if self.eval_subset is not None and self.knn_k > self.eval_subset:
            raise ValueError(f"--knn-k {self.knn_k} is larger than --eval-subset {self.eval_subset}: the kNN "
                             f"classifier needs at least k training images")
        likelihood = self.likelihood or METHODS.get(self.method, {}).get("likelihood")
        if likelihood == "bcl" and self.bcl_alpha * (1 - self.bcl_beta) + (1 - self.bcl_alpha) * self.bcl_beta <= 0:
            raise ValueError(f"--bcl-alpha {self.bcl_alpha} with --bcl-beta {self.bcl_beta}: α(1 − β) + (1 − α)β "
                             f"must be > 0 (the hardness weights are normalised by it)")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

FIELDS = {f.name: f for f in fields(Config)}
FIELD_NAMES = set(FIELDS)
# the settings by what they choose (docs/usage.md's flag reference is grouped so); every field in exactly one group
GROUPS: Dict[str, Tuple[str, ...]] = {
    "data": ("dataset", "recipe", "data_root", "subset", "val_size", "image_size", "download", "skip_bad_images",
             "unlabelled_root", "channels", "image_mean", "image_std", "gpu_augment", "exclude_classes",
             "background_strength", "item_contrast", "spurious_correlation"),
    "parts": ("method", "prior", "guide", "likelihood", "non_neg", "backbone", "width", "cifar_stem", "hidden_dim",
              "feature_dim", "temperature", "topk", "bcl_alpha", "bcl_beta", "bcl_class_prior", "tricl_decorrelation",
              "simlap_gate_penalty"),
    "optimisation": ("epochs", "batch_size", "lr", "gate_lr", "momentum", "weight_decay", "warmup_epochs", "seed"),
    "gate": ("prior_prob", "kl_weight", "kl_warmup_epochs", "gate_temperature", "gate_grad_to_backbone",
             "beta_concentration", "baseline", "budget_anneal_epochs", "budget_schedule", "budget_start",
             "aux_weight", "aux_dead_steps", "test_gate"),
    "evaluation": ("eval_subset", "probe_epochs", "knn_k", "eval_batch_size"),
    "runtime": ("out", "overwrite", "resume", "device", "num_workers", "deterministic", "amp", "channels_last",
                "compile", "log_every", "quiet", "tensorboard", "checkpoint_every"),
}
_KINDS = {"int": int, "float": float, "bool": bool, "str": str}
_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def check_setting(name: str, value: Any, source: Optional[str] = None) -> Any:
    """``value`` for the setting ``name``, checked against its ``Config`` field: the annotated type (``Optional``:
    None allowed; an int is taken for a float, a bool is not a number; floats must be finite, strings not empty),
    then the constraint in the field's metadata (see ``_opt``). Returns the value (an int given for a float as a
    float). A one-line ValueError names the setting — its ``--flag`` when ``source`` is None (the command line),
    else ``source: name`` (a preset's or a config.json's path) — what was expected and what was given."""
    f = FIELDS[name]
    meta = f.metadata
    label = f"--{name.replace('_', '-')}" if source is None else f"{source}: {name}"
    kind, optional = _field_type(f)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{label} must be {_EXPECTED[kind]}, got null")
    if not (isinstance(value, kind) or (kind is float and isinstance(value, int))) or (
            kind is not bool and isinstance(value, bool)):
        hint = (" (YAML reads a number with an exponent but no decimal point as text: write e.g. 3.0e-5)"
                if source and source.startswith("preset") and isinstance(value, str) and _is_number(value) else "")
        raise ValueError(f"{label} must be {_EXPECTED[kind]}, got {_shown(value)}{hint}")
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{label} must be a finite number, got {value}")
    if kind is str and not value.strip():
        raise ValueError(f"{label} must not be empty")
    why = f" ({meta['why']})" if "why" in meta else ""
    bounds = _bounds(meta, kind)
    if bounds is not None and not bounds[0](value):
        raise ValueError(f"{label} must {bounds[1]}{why}, got {value}")
    if "choices" in meta:
        noun, names = _choices(name, meta["choices"])
        noun = meta.get("noun", noun)
        if value not in names:
            raise ValueError(f"{label}: unknown {noun} {value!r}; expected one of: {', '.join(map(str, names))}"
                             f"{why}")
    if "pattern" in meta and not re.fullmatch(meta["pattern"][0], value):
        raise ValueError(f"{label} must be {meta['pattern'][1]}, got {value!r}")
    return value


def _field_type(f) -> Tuple[type, bool]:
    """(int | float | bool | str, whether None is allowed) from the field's annotation."""
    text = str(f.type).replace("typing.", "")
    optional = text.startswith("Optional[") or text.endswith("| None")
    base = text[len("Optional["):-1] if text.startswith("Optional[") else text.replace("| None", "").strip()
    return _KINDS[base], optional


def _bounds(meta: Dict[str, Any], kind: type) -> Optional[Tuple[Callable[[Any], bool], str]]:
    """(test, "lie in (0, 1)" / "be at least 1" / "be > 0" ...) for the bounds in ``meta``, or None."""
    low = next(((op, meta[op]) for op in ("ge", "gt") if op in meta), (None, None))
    high = next(((op, meta[op]) for op in ("le", "lt") if op in meta), (None, None))
    if low[0] is None and high[0] is None:
        return None
    tests = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b, "lt": lambda v, b: v < b}
    test = lambda v: all(tests[op](v, b) for op, b in (low, high) if op is not None)  # noqa: E731
    if low[0] and high[0]:
        return test, (f"lie in {'[' if low[0] == 'ge' else '('}{low[1]}, {high[1]}{']' if high[0] == 'le' else ')'}")
    op, bound = low if low[0] else high
    words = {"ge": "be at least" if kind is int else "be >=", "gt": "be >", "le": "be at most" if kind is int
             else "be <=", "lt": "be <"}
    return test, f"{words[op]} {bound}"


def _choices(name: str, choices) -> Tuple[str, List[str]]:
    """(noun, allowed names): a tuple as given, or ``"module:REGISTRY"``: that registry's names (imported on use,
    so that this module imports none of the parts)."""
    if isinstance(choices, str):
        module, attr = choices.split(":")
        registry = getattr(importlib.import_module(module), attr)
        return registry.kind, registry.names()
    return name.replace("_", " "), list(choices)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (int, float)):
        return repr(value)
    return f"a {type(value).__name__} ({json.dumps(value, default=str)[:60]})"


def check_amp(amp: str) -> None:
    """The one check of ``--amp`` (``Config.validate`` before a run, ``system.accelerate`` for direct calls)."""
    check_setting("amp", amp)

DATASET_OPTIONS = ("image_size", "download", "skip_bad_images", "gpu_augment", "spurious_correlation", "val_size",
                   "background_strength", "item_contrast", "unlabelled_root", "channels", "image_mean", "image_std",
                   "exclude_classes")
# settings that change neither what a run learns nor how it is scored: where and how it runs, logs and saves
BOOKKEEPING = ("out", "device", "overwrite", "resume", "data_root", "unlabelled_root", "download", "num_workers",
               "log_every", "checkpoint_every", "eval_batch_size", "channels_last", "compile", "deterministic", "quiet",
               "tensorboard")

# settings only a gated method reads (its prior, guide and gate term): an ungated run is the same run whatever they are
GATE_SETTINGS = ("prior_prob", "kl_weight", "gate_temperature", "beta_concentration", "baseline",
                 "gate_grad_to_backbone", "kl_warmup_epochs", "test_gate", "gate_lr")


# settings only a part with a budget reads (the top-k activation, the budgeted gates: ``budgeted = True``)
BUDGET_SETTINGS = ("budget_anneal_epochs", "budget_schedule", "budget_start")


def uses_budget(settings: Dict[str, Any]) -> bool:
    """Whether resolved settings run a part with a budget (its class says ``budgeted = True``)."""
    from guides import GUIDES
    from pyro_ncl.non_negativity import NON_NEGATIVITY
    parts = ((GUIDES, settings.get("guide")), (NON_NEGATIVITY, settings.get("non_neg")))
    return any(name in registry and getattr(registry[name], "budgeted", False) for registry, name in parts)


def changed_settings(saved: Dict[str, Any], wanted: Dict[str, Any]) -> List[str]:
    """The settings (bookkeeping aside) in which a run's saved config.json differs from the settings ``wanted``
    (``Config.to_dict``, resolved). A setting the saved run lacks (written by an older version) counts as its
    default; a wanted "auto" setting (None, e.g. ``--gpu-augment``) matches whatever the run resolved it to; for an
    ungated run (prior ``none`` in both) the gate's settings (``GATE_SETTINGS``) are not compared, nor the budget's
    (``BUDGET_SETTINGS``) for runs without a budget, since nothing reads them (a changed default must not make
    NCL's finished runs foreign)."""
    meta = {f.name: f for f in fields(Config)}
    auto = {name for name, f in meta.items() if f.metadata.get("shown") == "auto"}
    ungated = wanted.get("prior") == "none" and saved.get("prior") == "none"
    unbudgeted = not uses_budget(wanted) and not uses_budget(saved)
    return sorted(k for k, v in wanted.items()
                  if k not in BOOKKEEPING and not (v is None and k in auto)
                  and not (ungated and k in GATE_SETTINGS) and not (unbudgeted and k in BUDGET_SETTINGS)
                  and saved.get(k, meta[k].default if k in meta else None) != v)


def dataset_options(config: Config) -> Dict[str, Any]:
    """The dataset-specific settings that were given (a dataset refuses options it does not take, by name)."""
    return {k: getattr(config, k) for k in DATASET_OPTIONS
            if getattr(config, k) is not None and getattr(config, k) is not False}  # 0.0 is a setting (0.0 == False)
