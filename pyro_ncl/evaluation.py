"""End-of-run evaluation on the test split (the validation split when the run carves one, ``--val-size``: the
test split then stays unread), with the network in eval mode (BatchNorm statistics frozen).

Features: h (frozen backbone) and the method's features (the gated normalised z with the test-time hard gate for
gated methods, the normalised z otherwise). Linear probes are trained on the train split's features, without
augmentation, and scored on the test split.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, Optional

import torch

from pyro_ncl.data.base import DataBundle
from pyro_ncl.data.scenes import background_leakage
from pyro_ncl.metrics import active_dims, semantic_consistency, sparsity, weighted_consistency
from pyro_ncl.probes import knn_accuracy, linear_probe
from pyro_ncl.system import ContrastiveSystem

# the metrics ``score`` returns (besides feature_dim), in table order
RUN_METRICS = ["linear_probe_backbone", "linear_probe_features", "knn_accuracy", "semantic_consistency",
               "weighted_consistency", "sparsity", "active_dims", "open_gates", "background_leakage"]


@contextlib.contextmanager
def eval_mode(system: ContrastiveSystem) -> Iterator[ContrastiveSystem]:
    """no_grad + eval mode (BatchNorm uses, never updates, its running statistics) for the duration; the previous
    train/eval mode is restored afterwards."""
    was_training = system.training
    system.eval()
    try:
        with torch.no_grad():
            yield system
    finally:
        system.train(was_training)


def extract(system: ContrastiveSystem, data: DataBundle, split: str, batch_size: int, device,
            limit: Optional[int] = None, progress: Optional[Callable[[int], None]] = None) -> Dict[str, torch.Tensor]:
    """Concatenated ``system.features`` of a split (plus labels ``y``), on the CPU; the first ``limit`` images
    only when given. ``progress(n)`` after each batch of n images."""
    parts: Dict[str, list] = {}
    with eval_mode(system):
        seen = 0
        for x, y in data.eval_batches(split, batch_size, device):
            if limit is not None and seen >= limit:
                break
            seen += len(y)
            out = system.features(x)
            out["y"] = y
            if progress is not None:
                progress(len(y))
            for key, value in out.items():
                parts.setdefault(key, []).append(value.cpu())
    return {key: torch.cat(values)[:limit] for key, values in parts.items()}


def score(train: Dict[str, torch.Tensor], test: Dict[str, torch.Tensor], data: DataBundle, *, device,
          probe_epochs: int = 30, knn_k: int = 20, seed: int = 0, split: str = "test") -> Dict[str, float]:
    """The end-of-run metrics of extracted splits (``extract``'s dicts; ``test`` is the scored ``split``, "test"
    or "val"): linear probes on h and on the features, kNN, consistency (by count and activation-weighted),
    sparsity, active dims, feature_dim, and open_gates (gated) / background_leakage (scenes)."""
    feats_train, feats_test = train["features"], test["features"]
    metrics = {
        "linear_probe_backbone": linear_probe(train["h"], train["y"], test["h"], test["y"], data.num_classes,
                                              epochs=probe_epochs, seed=seed, device=device),
        "linear_probe_features": linear_probe(feats_train, train["y"], feats_test, test["y"], data.num_classes,
                                              epochs=probe_epochs, seed=seed, device=device),
        "knn_accuracy": knn_accuracy(feats_train, train["y"], feats_test, test["y"], k=knn_k,
                                     num_classes=data.num_classes),
        "semantic_consistency": semantic_consistency(feats_test, test["y"], data.num_classes),
        "weighted_consistency": weighted_consistency(feats_test, test["y"], data.num_classes),
        "sparsity": sparsity(feats_test),
        "active_dims": int(active_dims(feats_test)),
        "feature_dim": int(feats_test.shape[1]),
    }
    if "gate" in test:
        metrics["open_gates"] = float(test["gate"].mean())
    if hasattr(data, "background"):  # composed scenes: is the shared background readable from the features?
        n_train, n_test = len(feats_train), len(feats_test)
        metrics["background_leakage"] = background_leakage(
            feats_train, data.background("train")[:n_train], feats_test, data.background(split)[:n_test],
            epochs=probe_epochs, seed=seed, device=device)
    return {k: float(v) if not isinstance(v, int) else v for k, v in metrics.items()}


def evaluate(system: ContrastiveSystem, data: DataBundle, *, batch_size: int, device, probe_epochs: int = 30,
             knn_k: int = 20, seed: int = 0, limit: Optional[int] = None) -> Dict[str, float]:
    """``score`` of the train split's and the evaluated split's (``data.eval_split``: the validation split when
    carved, else the test split) features (the first ``limit`` images of each when given)."""
    split = data.eval_split
    train = extract(system, data, "train", batch_size, device, limit)
    test = extract(system, data, split, batch_size, device, limit)
    return score(train, test, data, device=device, probe_epochs=probe_epochs, knn_k=knn_k, seed=seed, split=split)
