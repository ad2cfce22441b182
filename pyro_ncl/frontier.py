"""The consistency–accuracy front: every variant of a run's features measured the same way, the summary over seeds,
and the paired comparison against the cheapest baselines.

A *variant* is one way of turning a trained run into evaluation features [N, K]:
    ungated runs:  ``features``      normalize(z) (NCL's, ncl_topk's, CL's, ...);
                   with ``posthoc``: NCL's features sparsified after training (``pyro_ncl.posthoc``) —
                   ``threshold`` (per-dimension q-quantile of the training split's positive entries, q on a grid of
                   0.05), ``top-k`` (each image's k largest entries, every k from 1 to 16, then 20, 24, 32),
                   ``rate-cap`` (each dimension active on at most a fraction r of the training images);
    gated runs:    ``mode``  normalize(z ⊙ mode of q) (the hard test-time gate), ``mean``  normalize(z ⊙ q(m = 1))
                   (the posterior open probability as a weight; left out when it equals the mode everywhere).
Every variant is scored on the very features it defines (``measure_features``): kNN and a linear probe on them,
semantic consistency by count and activation-weighted, sparsity, active dimensions, active entries per image, the
share of class-selective dimensions; gated variants add the gate's statistics (open gates per image, the posterior
entropy per image and its part on z's non-zero entries (``doubt_entropy``; the rest is spent on gates the budget
forces open on zeros), the share of images with at least one uncertain gate (0.1 < q(m_d = 1) < 0.9) and with one
on a non-zero entry (``uncertain_active_images``), the mean per-gate entropy, the share of z's active entries the
gate closes, class-selective gates).

The comparison that cannot flatter a gate is *paired by seed* (``paired_margins``): seed s of a design against the
baselines of seed s — NCL's post-hoc fronts (threshold, top-k; NCL itself is the q = 0 point of the threshold
front) and the trained ``ncl_topk`` front over its k — each read at the design's own kNN of that seed on its Pareto
front, linearly interpolated between its (dense) grid points.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from pyro_ncl.aggregate import group_by, mean_std
from pyro_ncl.metrics import (EPS, active_dims, class_selective_share, semantic_consistency, sparsity,
                              weighted_consistency)
from pyro_ncl.ops import safe_normalize
from pyro_ncl.posthoc import apply_thresholds, quantile_thresholds, rate_thresholds, top_k
from pyro_ncl.probes import knn_accuracy, linear_probe

# post-hoc sweeps of NCL's features (the bar a gate must clear), dense over the range gates reach
THRESHOLD_QUANTILES = tuple(round(0.05 * i, 2) for i in range(20))  # 0, 0.05, …, 0.95
TOP_KS = (*range(1, 17), 20, 24, 32)
RATE_CAPS = (0.3, 0.2, 0.1, 0.05)
UNCERTAIN = (0.1, 0.9)  # a gate is uncertain when its open probability lies strictly between these

# the columns of a measured variant (mean ± std over seeds in the tables)
METRICS = ["knn_accuracy", "linear_probe_features", "linear_probe_backbone", "semantic_consistency",
           "weighted_consistency", "sparsity", "active_dims", "active_per_image", "selective_dims", "open_gates",
           "open_gates_per_image", "posterior_entropy", "doubt_entropy", "uncertain_images",
           "uncertain_active_images", "gate_entropy", "closed_active", "selective_gates", "background_leakage"]


def bernoulli_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Elementwise entropy (nats) of Bernoulli(probs), 0 at 0 and 1."""
    p = probs.double().clamp(0, 1)
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


def uncertain_share(probs: torch.Tensor, bounds: Tuple[float, float] = UNCERTAIN) -> float:
    """Share of the rows of probs [N, K] with at least one entry strictly inside ``bounds``."""
    inside = (probs > bounds[0]) & (probs < bounds[1])
    return float(inside.any(-1).double().mean())


def measure_features(train: Dict[str, torch.Tensor], test: Dict[str, torch.Tensor], num_classes: int, *,
                     probe_epochs: int, knn_k: int, seed: int, device="cpu") -> Dict[str, float]:
    """Score features: ``train``/``test`` hold ``features`` [N, K] and ``y`` [N], and for gated variants
    ``gate`` [N, K] ({0, 1}: the hard test-time gate), ``probs`` [N, K], ``entropy`` [N] and ``z`` [N, K];
    ``background`` [N] (scenes) adds the background leakage of the features."""
    Ftr, Fte, ytr, yte = train["features"], test["features"], train["y"], test["y"]
    active = Fte.abs() > EPS
    out = {
        "knn_accuracy": knn_accuracy(Ftr, ytr, Fte, yte, k=knn_k, num_classes=num_classes),
        "linear_probe_features": linear_probe(Ftr, ytr, Fte, yte, num_classes, epochs=probe_epochs, seed=seed,
                                              device=device),
        "semantic_consistency": semantic_consistency(Fte, yte, num_classes),
        "weighted_consistency": weighted_consistency(Fte, yte, num_classes),
        "sparsity": sparsity(Fte),
        "active_dims": active_dims(Fte),
        "active_per_image": float(active.sum(1).double().mean()),
        "selective_dims": class_selective_share(Fte, yte, num_classes),
    }
    if "background" in test:
        from pyro_ncl.data.scenes import background_leakage
        out["background_leakage"] = background_leakage(Ftr, train["background"], Fte, test["background"],
                                                       epochs=probe_epochs, seed=seed, device=device)
    if "gate" in test:
        gate, z_active = test["gate"] > 0.5, test["z"].abs() > EPS
        out.update(open_gates=float(gate.double().mean()),
                   open_gates_per_image=float(gate.sum(1).double().mean()),
                   posterior_entropy=float(test["entropy"].double().mean()),
                   uncertain_images=uncertain_share(test["probs"]),
                   uncertain_active_images=uncertain_share(test["probs"].masked_fill(~z_active, 0.0)),
                   gate_entropy=float(bernoulli_entropy(test["probs"]).mean()),
                   closed_active=float((z_active & ~gate).sum() / z_active.sum().clamp(min=1)),
                   selective_gates=class_selective_share(gate.double(), yte, num_classes, eps=0.5))
        if "doubt_entropy" in test:
            out["doubt_entropy"] = float(test["doubt_entropy"].double().mean())
    return {k: float(v) for k, v in out.items()}


def variants(train: Dict[str, torch.Tensor], test: Dict[str, torch.Tensor], posthoc: bool = False
             ) -> Iterable[Tuple[str, Optional[float], Dict[str, torch.Tensor], Dict[str, torch.Tensor]]]:
    """(variant, parameter, train, test) for each way of reading a run's features (see the module docstring).
    ``train``/``test``: ``system.features`` of the splits (``evaluation.extract``: z, features, y, and for gated
    runs gate, probs, entropy; ``background`` when the dataset has one)."""
    def with_features(split, features, **extra):
        kept = {k: split[k] for k in ("y", "background") if k in split}
        return {"features": features, **kept, **extra}

    if "gate" in test:
        deterministic = all(torch.equal(s["probs"], s["gate"]) for s in (train, test))  # a point mass: mean = mode
        for name, key in (("mode", "gate"),) + ((("mean", "probs"),) if not deterministic else ()):
            tr, te = (with_features(s, safe_normalize(s["z"] * s[key]), z=s["z"], gate=s["gate"],
                                    probs=s["probs"], entropy=s["entropy"],
                                    **({"doubt_entropy": s["doubt_entropy"]} if "doubt_entropy" in s else {}))
                      for s in (train, test))
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
def curve_name(design: str, variant: str) -> str:
    """The plotted curve of a point: the design for its evaluated features, ``design+variant`` otherwise."""
    return design if variant == "features" else f"{design} ({variant})" if variant in ("mode", "mean") \
        else f"{design}+{variant}"


def point_key(row: dict) -> tuple:
    """(design, knob, variant, param): what identifies a point across seeds."""
    return row["design"], row.get("knob"), row["variant"], row.get("param")


def summarise(rows: List[dict]) -> List[dict]:
    """Rows of single runs (``design``, ``knob`` — the value of the design's swept setting or None —, ``variant``,
    ``param`` — the variant's own parameter or None —, ``seed`` and METRICS) → one point per (design, knob,
    variant, param) with ``curve``, ``seeds`` and, per metric, ``<metric>`` (mean over seeds), ``<metric>_std``
    and ``<metric>_n``; ``pareto`` marks the points that no other point beats in both mean kNN and mean
    consistency."""
    out = []
    for (design, knob, variant, param), members in group_by(rows, point_key).items():
        point = {"design": design, "knob": knob, "variant": variant, "param": param,
                 "curve": curve_name(design, variant), "seeds": sorted(m["seed"] for m in members)}
        for metric in METRICS:
            mean, std, n = mean_std([m.get(metric) for m in members])
            point.update({metric: mean, f"{metric}_std": std, f"{metric}_n": n})
        out.append(point)
    for point in out:
        point["pareto"] = not _dominated(point, out)
    return out


CONSISTENCY = "semantic_consistency"


def _finite(p: dict, metric: str = CONSISTENCY) -> bool:
    value = p.get(metric)
    return math.isfinite(p["knn_accuracy"]) and value is not None and math.isfinite(value)


def _dominated(p: dict, others: List[dict], metric: str = CONSISTENCY) -> bool:
    if not _finite(p, metric):
        return True
    x, y = p["knn_accuracy"], p[metric]
    return any(o is not p and _finite(o, metric) and o["knn_accuracy"] >= x and o[metric] >= y
               and (o["knn_accuracy"] > x or o[metric] > y) for o in others)


def baseline_at(points: List[dict], curves: Sequence[str], knn: float, metric: str = CONSISTENCY
                ) -> Optional[float]:
    """The consistency (``metric``: count-based, or ``weighted_consistency``) a baseline reaches at kNN accuracy
    ``knn``: the Pareto front of the points (or one seed's rows, each with a ``curve``) of ``curves`` in (kNN,
    metric), linearly interpolated in kNN; beyond its most accurate point, that point's value; below its least
    accurate point, that point's (the front's highest) value. None without points."""
    members = [p for p in points if p["curve"] in curves and _finite(p, metric)]
    front = sorted((p for p in members if not _dominated(p, members, metric)), key=lambda p: p["knn_accuracy"])
    if not front:
        return None
    xs, ys = [p["knn_accuracy"] for p in front], [p[metric] for p in front]
    if knn <= xs[0]:
        return ys[0]
    if knn >= xs[-1]:
        return ys[-1]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= knn <= x1:
            return y0 + (y1 - y0) * (knn - x0) / (x1 - x0) if x1 > x0 else max(y0, y1)
    return None  # unreachable


Front = Tuple[Tuple[str, ...], ...]  # groups of curves; the baseline is the best group's interpolated front


def baselines(reference: str = "ncl", trained: str = "ncl_topk") -> Dict[str, Front]:
    """The baseline fronts a design is compared with, by name → groups of curves (each group one interpolated
    front; the baseline at a kNN is the best group's): NCL + threshold (NCL itself its q = 0 point), NCL + top-k,
    every post-hoc cut of NCL (the best of threshold, top-k and rate-cap), and the trained top-k activation."""
    threshold, top = (reference, f"{reference}+threshold"), (reference, f"{reference}+top-k")
    return {"threshold": (threshold,), "top_k": (top,),
            "posthoc": (threshold, top, (reference, f"{reference}+rate-cap")), "trained_top_k": ((trained,),)}


def front_level(rows: List[dict], front: Front, knn: float, metric: str = CONSISTENCY) -> Optional[float]:
    """The best of the groups' fronts (``baseline_at``) at ``knn``; None when no group has points."""
    levels = [v for v in (baseline_at(rows, group, knn, metric) for group in front) if v is not None]
    return max(levels) if levels else None


def paired_margins(rows: List[dict], key: tuple, fronts: Dict[str, Front], metric: str = CONSISTENCY
                   ) -> Dict[str, dict]:
    """For the point ``key`` (design, knob, variant, param) and each baseline front (name → groups of curves):
    per seed s where both exist, the point's consistency (``metric``) minus the front of seed s read at the
    point's kNN of seed s. Returns name → {"seeds", "margins", "mean", "std", "n", "wins"} (wins: margins > 0)."""
    mine = {r["seed"]: r for r in rows if point_key(r) == key and _finite(r, metric)}
    out = {}
    for name, front in fronts.items():
        seeds, margins = [], []
        for seed, row in sorted(mine.items()):
            same_seed = [dict(r, curve=curve_name(r["design"], r["variant"])) for r in rows if r["seed"] == seed]
            level = front_level(same_seed, front, row["knn_accuracy"], metric)
            if level is not None:
                seeds.append(seed)
                margins.append(row[metric] - level)
        mean, std, n = mean_std(margins)
        out[name] = {"seeds": seeds, "margins": margins, "mean": mean, "std": std, "n": n,
                     "wins": sum(m > 0 for m in margins)}
    return out


def eligible(points: List[dict], design: str, reference: dict, tolerance: float = 0.01) -> List[dict]:
    """The design's points whose mean kNN and mean linear probe on h are within ``tolerance`` of the reference's."""
    return [p for p in points if p["design"] == design and _finite(p)
            and p["knn_accuracy"] >= reference["knn_accuracy"] - tolerance
            and p["linear_probe_backbone"] >= reference["linear_probe_backbone"] - tolerance]


def select(rows: List[dict], points: List[dict], reference: str = "ncl", trained: str = "ncl_topk",
           tolerance: float = 0.01) -> Dict[str, dict]:
    """Each design's chosen point (made on the validation split): the most consistent of its points within
    ``tolerance`` of the reference's kNN and linear probe on h, with its paired margins over the baseline fronts
    (``paired_margins``, in count-based and in activation-weighted consistency); a design without such a point gets
    its most accurate point, marked ``eligible: False``. Only points measured on every seed of the reference are
    chosen. ``widest``: the design's point with the largest mean margin over every post-hoc cut at its own kNN,
    whatever its kNN. Returns design → {"point", "eligible", "margins", "weighted_margins", "widest"}; empty without
    the reference."""
    ref = next((p for p in points if p["curve"] == reference), None)
    if ref is None:
        return {}
    fronts = baselines(reference, trained)
    out = {}
    for design in dict.fromkeys(p["design"] for p in points):
        if design == reference:
            continue
        # only points measured on every seed the reference has (a pilot point of one seed is reported, not chosen)
        complete = [p for p in points if p["design"] != design or set(ref["seeds"]) <= set(p["seeds"])]
        candidates = eligible(complete, design, ref, tolerance)
        ok = bool(candidates)
        pool = candidates or [p for p in complete if p["design"] == design and _finite(p)]
        if not pool:
            continue
        best = max(pool, key=lambda p: p["semantic_consistency"] if ok else p["knn_accuracy"])
        own = {name: front for name, front in fronts.items() if design not in
               {c.split("+")[0] for group in front for c in group}}
        # the design's point furthest above every post-hoc cut at its own kNN, whatever its kNN
        by_margin = [(paired_margins(rows, point_key(p), {"posthoc": fronts["posthoc"]})["posthoc"], p)
                     for p in complete if p["design"] == design and _finite(p)]
        by_margin = [(m, p) for m, p in by_margin if m["n"]]
        widest = max(by_margin, key=lambda item: item[0]["mean"], default=(None, None))
        out[design] = {"point": best, "eligible": ok, "margins": paired_margins(rows, point_key(best), own),
                       "weighted_margins": paired_margins(rows, point_key(best), own, "weighted_consistency"),
                       "widest": {"point": widest[1], "posthoc": widest[0]}}
    return out


def target_consistency(reference: dict) -> float:
    """The issues' goal: NCL + ½(1 − NCL)."""
    return reference["semantic_consistency"] + 0.5 * (1 - reference["semantic_consistency"])


# ---------------------------------------------------------------- the pre-registered selection rule
REFERENCE, TRAINED = "ncl", "ncl_topk"  # the designs every other is compared with: NCL (and its cuts), the top-k


def choose_default(chosen: Dict[str, dict], candidates: List[str]) -> Optional[dict]:
    """{"design", "point", "within_1pt"}: the candidate design whose front lies furthest above every post-hoc cut
    (the largest mean margin of its widest point, paired by seed at its own kNN), at its most consistent point
    within 1 point of NCL's kNN when that point is above the post-hoc cuts (a positive mean margin), else at its
    widest point (``within_1pt: False``); None without candidates."""
    wide = [(entry["widest"]["posthoc"]["mean"], design) for design, entry in chosen.items()
            if design in candidates and entry["widest"]["point"] is not None]
    if not wide:
        return None
    design = max(wide)[1]
    entry = chosen[design]
    if entry["eligible"] and entry["margins"].get("posthoc", {}).get("mean", -1) > 0:
        return {"design": design, "point": entry["point"], "within_1pt": True}
    return {"design": design, "point": entry["widest"]["point"], "within_1pt": False}


def final_designs(designs: Dict[str, dict], selection: dict) -> Dict[str, dict]:
    """NCL (with its post-hoc cuts), the trained top-k activation over its whole sweep (both are the fronts a design
    is compared with at its own kNN) and each other selected design at its chosen knob value."""
    out = {}
    for name, design in designs.items():
        if name in (REFERENCE, TRAINED):  # the baselines keep their whole sweep: a front to compare at equal kNN
            out[name] = design
        elif name in selection["designs"]:
            chosen = selection["designs"][name]
            knob = (design["knob"][0], [chosen["knob"]]) if design["knob"] else None
            out[name] = dict(design, knob=knob)
    return out


def reported_points(points: List[dict], selection: dict) -> List[dict]:
    """The final's points whose margins are reported: for each design but NCL, the point ``selection.json`` names
    (its knob and test gate); ``ncl_topk`` is measured over its whole sweep (a front), but only its chosen point is
    reported as the design."""
    chosen = selection.get("designs", {})
    out = []
    for p in points:
        if p["design"] == REFERENCE:
            continue
        pick = chosen.get(p["design"])
        if pick is not None and (p["knob"], p["variant"]) != (pick["knob"], pick["variant"]):
            continue
        out.append(p)
    return out
