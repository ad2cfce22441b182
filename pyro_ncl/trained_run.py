"""Look inside a finished run: reload it, and query its posterior over gates.

    run = load_run("runs/bayesncl")                 # config.json + checkpoint.pt, network in eval mode
    x, y = load_images(run, "test", 16)             # [16, C, H, W] normalised images, [16] labels
    run.encode(x)                                   # {h, z, features (, gate, probs, ...)}: system.features, batched
    run.read_images(["a.png", "b.jpg"])             # files → [2, C, H, W] normalised as the run's evaluation does
    gate_probabilities(run, x)                      # [16, K] q(m_d = 1 | x), the guide's own (guide.probs)
    sample_gates(run, x, 100)                       # [100, 16, K] masks drawn by the guide (guide.sample_masks)
    posterior_entropy(run, x)                       # [K] mean entropy of each gate's marginal (nats): which are uncertain
    class_gate_frequency(run)                       # [C, K] fraction of each class's test images opening gate d
    switched_on(run, x[0])                          # [(dim, probability), ...] the gates image 0 opens

Every query runs under ``torch.no_grad()`` with the network in eval mode (BatchNorm uses, and never updates, its
running statistics); the system's train/eval mode is restored afterwards. Ungated methods raise ``ValueError``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as nnf

from pyro_ncl.checkpoint import CheckpointError, load_checkpoint
from pyro_ncl.config import Config, dataset_options
from pyro_ncl.run_folder import config_from_run
from pyro_ncl.data import load_dataset
from pyro_ncl.data.base import DataBundle
from pyro_ncl.evaluation import eval_mode, extract
from pyro_ncl.likelihoods import LIKELIHOODS
from pyro_ncl.metrics import class_activation_counts
from pyro_ncl.ops import safe_normalize
from pyro_ncl.run_folder import read_metrics
from pyro_ncl.system import ContrastiveSystem, build_system

__all__ = ["Run", "load_run", "load_images", "extract_split", "gate_probabilities", "sample_gates",
           "posterior_entropy", "bernoulli_entropy", "gate_frequency_by_class", "class_gate_frequency",
           "switched_on"]


@dataclass
class Run:
    """A reloaded (or just trained: ``pyro_ncl.run``) run: its folder, resolved ``config``, ``system`` (eval mode)
    on ``device``, ``metrics`` (metrics.json; {} before evaluation); ``data`` loads the dataset on first use
    (``data_root`` overrides the folder saved in the config)."""

    path: Path
    config: Config
    system: ContrastiveSystem
    device: torch.device
    data_root: Optional[str] = None
    _data: Optional[DataBundle] = field(default=None, repr=False)
    metrics: Dict[str, float] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        c = self.config
        return (f"Run({str(self.path)!r}: {c.method} prior={c.prior} guide={c.guide} likelihood={c.likelihood}, "
                f"K={c.feature_dim}, {c.dataset}, seed {c.seed}, on {self.device})")

    @property
    def data(self) -> DataBundle:
        if self._data is None:
            options = {k: v for k, v in dataset_options(self.config).items() if k != "download"}
            subset = self.config.subset
            if options.pop("unlabelled_root", None):  # the pre-training pool: not what the evaluation reads
                subset = None  # (--subset chose among the pool; the labelled images are all evaluated)
            self._data = load_dataset(self.config.dataset, self.data_root or self.config.data_root,
                                      subset=subset, **options)
        return self._data

    @property
    def gated(self) -> bool:
        return self.system.gated

    def encode(self, x: torch.Tensor, batch_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """Normalised images x [N, C, H, W] (or one [C, H, W]) → ``system.features`` on the CPU, computed batch by
        batch on the run's device in eval mode: h [N, F], z [N, K], features [N, K] (what the evaluation scores),
        and for gated methods gate [N, K] (the test-time mask), probs [N, K] and what else the system reports."""
        parts: Dict[str, list] = {}
        with eval_mode(self.system) as system:
            for xb in _batches(x, batch_size or self.config.eval_batch_size):
                for key, value in system.features(xb.to(self.device)).items():
                    parts.setdefault(key, []).append(value.cpu())
        return {key: torch.cat(values) for key, values in parts.items()}

    def read_images(self, paths) -> torch.Tensor:
        """Image files → [N, C, S, S] as this run's evaluation sees its own images: decoded, converted to its
        channels, resized and centre-cropped to its size, normalised with its statistics (``DataBundle.eval_image``
        and ``eval_normalise``; opens the run's dataset for them)."""
        paths = [str(p) for p in paths]
        if not paths:
            raise ValueError("read_images needs at least one image file")
        return self.data.eval_normalise(torch.stack([self.data.eval_image(p) for p in paths]))


def load_run(run_dir, device="cpu", data_root: Optional[str] = None) -> Run:
    """Rebuild the run's system from ``config.json``, load ``checkpoint.pt``'s "system" state (``weights_only``),
    put it in eval mode on ``device``. The dataset is loaded lazily (``run.data``)."""
    run_dir, device = Path(run_dir), torch.device(device)
    config = config_from_run(run_dir, unknown="warn").resolved()  # settings of another code version: left out
    state = load_checkpoint(run_dir / "checkpoint.pt", map_location=device)
    if "system" not in state:
        raise CheckpointError(f"{run_dir / 'checkpoint.pt'} holds no 'system' state dict")
    # The input channels come from the checkpoint's first convolution; the class count matters only to supervised
    # likelihoods (label embeddings). Either way the dataset is read only when the checkpoint cannot tell.
    run = Run(run_dir, config, None, device, data_root)  # type: ignore[arg-type]
    in_channels = _in_channels(state["system"]) or run.data.in_channels
    num_classes = run.data.num_classes if LIKELIHOODS[config.likelihood].requires_labels else 10  # 10: unused
    system = build_system(config, in_channels, num_classes, device)
    try:
        system.load_state_dict(state["system"])
    except RuntimeError as err:
        raise CheckpointError(f"{run_dir / 'checkpoint.pt'} does not fit its config.json: "
                              f"{str(err).splitlines()[0]}") from None
    run.system = system.eval()
    if (run_dir / "metrics.json").is_file():
        run.metrics = read_metrics(run_dir / "metrics.json")
    return run


def _in_channels(state: Dict[str, torch.Tensor]) -> Optional[int]:
    """Input channels from the first 4-D (convolution) weight of the encoder, if any."""
    for name, value in state.items():
        if name.startswith("encoder.") and name.endswith("weight") and value.dim() == 4:
            return int(value.shape[1])
    return None


def _require_gate(run: Run) -> None:
    if not run.gated:
        raise ValueError(f"run {run.path} has no gate (method {run.config.method})")


def _batches(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W] or [C, H, W], got shape {tuple(x.shape)}")
    for start in range(0, x.shape[0], batch_size):
        yield x[start:start + batch_size]


def _ask_guide(run: Run, x: torch.Tensor,
               query: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor], dim: int = 0) -> torch.Tensor:
    """``query(guide, h, z)`` on the backbone features h and the normalised projector output z of images
    x [N, C, H, W] (normalised, as ``load_images`` gives), batch by batch, concatenated along ``dim`` on the CPU."""
    _require_gate(run)
    out = []
    with eval_mode(run.system) as system:
        for xb in _batches(x, run.config.eval_batch_size):
            h, z = system.encoder(xb.to(run.device))
            out.append(query(system.guide, h.float(), safe_normalize(z.float())).float().cpu())
    return torch.cat(out, dim)


def _open_logits(run: Run, x: torch.Tensor) -> torch.Tensor:
    """x [N, C, H, W] → [N, K] the logit of the guide's own open probability (``guide.open_logits``)."""
    return _ask_guide(run, x, lambda guide, h, z: guide.open_logits(h, z))


def load_images(run: Run, split: str = "test", n: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` (default all) images of a split, normalised as the network sees them: x [n, C, H, W], y [n]."""
    xs, ys, have = [], [], 0
    for x, y in run.data.eval_batches(split, run.config.eval_batch_size, "cpu"):
        xs.append(x), ys.append(y)
        have += x.shape[0]
        if n is not None and have >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def extract_split(run: Run, split: str = "test", batch_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """``evaluation.extract`` of a split: h [N, F], z [N, K], features [N, K], gate [N, K] (gated runs), y [N]."""
    return extract(run.system, run.data, split, batch_size or run.config.eval_batch_size, run.device)


def gate_probabilities(run: Run, x: torch.Tensor) -> torch.Tensor:
    """[N, K] the guide's own open probabilities q(m_d = 1 | x) (``guide.probs``: σ(a_d) for the Bernoulli guides,
    σ(a_d/T) for ``deterministic``, P(m_d > ½) = σ(a_d) for ``relaxed_soft``) of images x [N, C, H, W]."""
    return _ask_guide(run, x, lambda guide, h, z: guide.probs(h, z))


def sample_gates(run: Run, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """[S, N, K] gate masks drawn by the guide (``guide.sample_masks``) for images x [N, C, H, W]: {0, 1} for hard
    guides, (0, 1) for ``relaxed_soft``, and the one mask of the ``deterministic`` point estimate S times."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    return _ask_guide(run, x, lambda guide, h, z: guide.sample_masks(h, num_samples, z), dim=1)


def bernoulli_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Elementwise entropy (nats) of Bernoulli(σ(logits)), stable for large |logits|; in [0, log 2]."""
    p = torch.sigmoid(logits)
    return p * nnf.softplus(-logits) + (1 - p) * nnf.softplus(logits)


def posterior_entropy(run: Run, x: torch.Tensor) -> torch.Tensor:
    """[K] per-dimension Bernoulli entropy of q(m_d | x) averaged over images x [N, C, H, W]: high = uncertain gate."""
    return bernoulli_entropy(_open_logits(run, x)).mean(0)


def gate_frequency_by_class(gate: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[C, K] fraction of the samples of class c with gate d open (gate [N, K] in {0, 1}, y [N]); NaN rows for
    classes without samples."""
    sizes = torch.bincount(y.long(), minlength=num_classes).to(torch.float64)
    open_counts = class_activation_counts(gate.double(), y, num_classes, eps=0.5).cpu()
    return (open_counts / sizes.unsqueeze(1)).float()


def class_gate_frequency(run: Run, split: str = "test") -> torch.Tensor:
    """[C, K] fraction of the split's images of each class that open gate d under the test-time gate 1[a > 0]."""
    _require_gate(run)
    out = extract_split(run, split)
    return gate_frequency_by_class(out["gate"], out["y"], run.data.num_classes)


def switched_on(run: Run, image: torch.Tensor) -> List[Tuple[int, float]]:
    """The dimensions one image [C, H, W] (or [1, C, H, W]) opens under the test-time gate (the posterior's mode,
    ``guide.mode``: q(m_d = 1) > 0.5 for factorised posteriors, the k largest logits for ``exact_k``), as (dim,
    ``guide.probs``) pairs, most probable first."""
    if image.dim() == 4 and image.shape[0] != 1:
        raise ValueError(f"switched_on takes one image, got a batch of {image.shape[0]}")
    mode = _ask_guide(run, image, lambda guide, h, z: guide.mode(h, z))[0]
    probs = gate_probabilities(run, image)[0]
    dims = (mode > 0.5).nonzero().squeeze(1).tolist()
    return sorted(((d, float(probs[d])) for d in dims), key=lambda item: (-item[1], item[0]))
