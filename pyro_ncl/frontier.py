"""The consistency–accuracy front: every variant of a run's features measured the same way, and the summary.

A *variant* is one way of turning a trained run into evaluation features [N, K]:
    ungated runs:  ``features``      normalize(z) (NCL's, CL's, ...);
                   with ``posthoc``: NCL's features sparsified after training (``pyro_ncl.posthoc``) —
                   ``threshold`` (per-dimension q-quantile of the training split's positive entries),
                   ``top-k`` (each image's k largest entries), ``rate-cap`` (each dimension active on at most a
                   fraction r of the training images);
    gated runs:    ``mode``  normalize(z ⊙ 1[a > 0]) (the hard test-time gate), ``mean``  normalize(z ⊙ σ(a))
                   (the posterior open probability as a weight; left out when it equals the mode everywhere,
                   as for deterministic gates).
Every variant is scored on the very features it defines (``measure_features``): kNN and a linear probe on them,
semantic consistency, sparsity, active dimensions, active entries per image, the share of class-selective
dimensions; gated variants add the gate's statistics (open gates per image, per-gate entropy, the share of z's
active entries the gate closes, class-selective gates). The linear probe on h is the run's, shared by its variants.
"""
from __future__ import annotations

import math
import statistics
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from pyro_ncl.metrics import EPS, active_dims, class_selective_share, semantic_consistency, sparsity
from pyro_ncl.ops import safe_normalize
from pyro_ncl.posthoc import apply_thresholds, quantile_thresholds, rate_thresholds, top_k
from pyro_ncl.probes import knn_accuracy, linear_probe

# post-hoc sweeps of NCL's features (the bar a gate must clear)
THRESHOLD_QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95)
TOP_KS = (1, 2, 4, 8, 16)
RATE_CAPS = (0.3, 0.2, 0.1, 0.05)

# the columns of a measured variant, in table order (mean ± std over seeds in frontier.md)
METRICS = ["knn_accuracy", "linear_probe_features", "linear_probe_backbone", "semantic_consistency", "sparsity",
           "active_dims", "active_per_image", "selective_dims", "open_gates", "open_gates_per_image",
           "gate_entropy", "closed_active", "selective_gates"]


def bernoulli_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Elementwise entropy (nats) of Bernoulli(probs), 0 at 0 and 1."""
    p = probs.double().clamp(0, 1)
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


def measure_features(train: Dict[str, torch.Tensor], test: Dict[str, torch.Tensor], num_classes: int, *,
                     probe_epochs: int, knn_k: int, seed: int, device="cpu") -> Dict[str, float]:
    """Score features: ``train``/``test`` hold ``features`` [N, K] and ``y`` [N], and for gated variants
    ``gate`` [N, K] ({0, 1}: the hard test-time gate), ``probs`` [N, K] and ``z`` [N, K]."""
    Ftr, Fte, ytr, yte = train["features"], test["features"], train["y"], test["y"]
    active = Fte.abs() > EPS
    out = {
        "knn_accuracy": knn_accuracy(Ftr, ytr, Fte, yte, k=knn_k, num_classes=num_classes),
        "linear_probe_features": linear_probe(Ftr, ytr, Fte, yte, num_classes, epochs=probe_epochs, seed=seed,
                                              device=device),
        "semantic_consistency": semantic_consistency(Fte, yte, num_classes),
        "sparsity": sparsity(Fte),
        "active_dims": active_dims(Fte),
        "active_per_image": float(active.sum(1).double().mean()),
        "selective_dims": class_selective_share(Fte, yte, num_classes),
    }
    if "gate" in test:
        gate, z_active = test["gate"] > 0.5, test["z"].abs() > EPS
        out.update(open_gates=float(gate.double().mean()),
                   open_gates_per_image=float(gate.sum(1).double().mean()),
                   gate_entropy=float(bernoulli_entropy(test["probs"]).mean()),
                   closed_active=float((z_active & ~gate).sum() / z_active.sum().clamp(min=1)),
                   selective_gates=class_selective_share(gate.double(), yte, num_classes, eps=0.5))
    return {k: float(v) for k, v in out.items()}


def variants(train: Dict[str, torch.Tensor], test: Dict[str, torch.Tensor], posthoc: bool = False
             ) -> Iterable[Tuple[str, Optional[float], Dict[str, torch.Tensor], Dict[str, torch.Tensor]]]:
    """(variant, parameter, train, test) for each way of reading a run's features (see the module docstring).
    ``train``/``test``: ``system.features`` of the splits (``evaluation.extract``: z, features, y, gate, probs)."""
    def with_features(split, features, **extra):
        return {"features": features, "y": split["y"], **extra}

    if "gate" in test:
        deterministic = all(torch.equal(s["probs"], s["gate"]) for s in (train, test))  # e.g. top-k: mean = mode
        for name, key in (("mode", "gate"),) + ((("mean", "probs"),) if not deterministic else ()):
            tr, te = (with_features(s, safe_normalize(s["z"] * s[key]), z=s["z"], gate=s["gate"],
                                    probs=s["probs"]) for s in (train, test))
            yield name, None, tr, te
        return
    yield "features", None, with_features(train, train["features"]), with_features(test, test["features"])
    if not posthoc:
        return
    Ftr, Fte = train["features"], test["features"]
    for q in THRESHOLD_QUANTILES[1:]:
        t = quantile_thresholds(Ftr, q)
        yield "threshold", q, with_features(train, apply_thresholds(Ftr, t)), with_features(test, apply_thresholds(Fte, t))
    for k in TOP_KS:
        yield "top-k", k, with_features(train, top_k(Ftr, k)), with_features(test, top_k(Fte, k))
    for r in RATE_CAPS:
        t = rate_thresholds(Ftr, r)
        yield "rate-cap", r, with_features(train, apply_thresholds(Ftr, t)), with_features(test, apply_thresholds(Fte, t))


# ---------------------------------------------------------------- summary over seeds
def mean_std(values: Sequence[float]) -> Tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values (NaN, NaN, 0 if none)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan, math.nan, 0
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0, len(finite)


def summarise(rows: List[dict]) -> List[dict]:
    """Rows of single runs (``design``, ``knob`` — the value of the design's swept setting or None —, ``variant``,
    ``param`` — the variant's own parameter or None —, ``seed`` and METRICS) → one point per (design, knob,
    variant, param) with ``curve``, ``seeds`` and, per metric, ``<metric>`` (mean over seeds), ``<metric>_std``
    and ``<metric>_n``; ``pareto`` marks the points that no other point beats in both mean kNN and mean
    consistency."""
    groups: Dict[tuple, List[dict]] = {}
    for row in rows:
        groups.setdefault((row["design"], row.get("knob"), row["variant"], row.get("param")), []).append(row)
    out = []
    for (design, knob, variant, param), members in groups.items():
        point = {"design": design, "knob": knob, "variant": variant, "param": param,
                 "curve": curve_name(design, variant), "seeds": sorted(m["seed"] for m in members)}
        for metric in METRICS:
            mean, std, n = mean_std([m.get(metric) for m in members])
            point.update({metric: mean, f"{metric}_std": std, f"{metric}_n": n})
        out.append(point)
    for point in out:
        x, y = point["knn_accuracy"], point["semantic_consistency"]
        point["pareto"] = math.isfinite(x) and math.isfinite(y) and not any(
            o is not point and o["knn_accuracy"] >= x and o["semantic_consistency"] >= y
            and (o["knn_accuracy"] > x or o["semantic_consistency"] > y) for o in out)
    return out


def curve_name(design: str, variant: str) -> str:
    """The plotted curve of a point: the design for its evaluated features, ``design+variant`` otherwise."""
    return design if variant == "features" else f"{design} ({variant})" if variant in ("mode", "mean") \
        else f"{design}+{variant}"


def baseline_at(points: List[dict], curves: Sequence[str], knn: float) -> Optional[float]:
    """The consistency a baseline reaches at kNN accuracy ``knn``: the Pareto front of the mean points of
    ``curves`` in (kNN, consistency), linearly interpolated in kNN; beyond its most accurate point, that point's
    consistency; below its least accurate point, that point's (the front's highest) consistency. None without
    points."""
    front = [p for p in points if p["curve"] in curves and math.isfinite(p["knn_accuracy"])
             and math.isfinite(p["semantic_consistency"])]
    front = [p for p in front if not any(o["knn_accuracy"] >= p["knn_accuracy"]
                                         and o["semantic_consistency"] >= p["semantic_consistency"]
                                         and (o["knn_accuracy"] > p["knn_accuracy"]
                                              or o["semantic_consistency"] > p["semantic_consistency"])
                                         for o in front)]
    if not front:
        return None
    front.sort(key=lambda p: p["knn_accuracy"])
    xs, ys = [p["knn_accuracy"] for p in front], [p["semantic_consistency"] for p in front]
    if knn <= xs[0]:
        return ys[0]
    if knn >= xs[-1]:
        return ys[-1]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= knn <= x1:
            return y0 + (y1 - y0) * (knn - x0) / (x1 - x0) if x1 > x0 else max(y0, y1)
    return None  # unreachable


def goal_check(points: List[dict], reference: str = "ncl", tolerance: float = 0.01) -> List[dict]:
    """Issue 11's goal for each curve: its point of highest mean consistency among those with mean kNN within
    ``tolerance`` of the reference's and mean linear probe on h within ``tolerance`` of the reference's; that
    consistency against the target c_ref + ½(1 − c_ref), and against the reference sparsified after training at
    the same kNN (``baseline_at``: ``reference+threshold`` with the reference itself as its q = 0 point, and
    ``reference+top-k``). Returns one row per curve (reference excluded); empty without the reference."""
    ref = next((p for p in points if p["curve"] == reference), None)
    if ref is None:
        return []
    target = ref["semantic_consistency"] + 0.5 * (1 - ref["semantic_consistency"])
    rows = []
    for curve in dict.fromkeys(p["curve"] for p in points):
        if curve == reference:
            continue
        eligible = [p for p in points if p["curve"] == curve
                    and p["knn_accuracy"] >= ref["knn_accuracy"] - tolerance
                    and p["linear_probe_backbone"] >= ref["linear_probe_backbone"] - tolerance]
        best = max(eligible, key=lambda p: p["semantic_consistency"], default=None)
        row = {"curve": curve, "target": target, "best": best}
        if best is not None:
            x, c = best["knn_accuracy"], best["semantic_consistency"]
            row["threshold"] = baseline_at(points, (reference, f"{reference}+threshold"), x)
            row["top_k"] = baseline_at(points, (reference, f"{reference}+top-k"), x)
            row["meets_target"] = c >= target
            row["beats_threshold"] = row["threshold"] is None or c > row["threshold"]
            row["beats_top_k"] = row["top_k"] is None or c > row["top_k"]
        rows.append(row)
    return rows
