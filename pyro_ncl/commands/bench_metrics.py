"""Benchmark: the chunked, vectorised metric suite against a per-dimension numpy loop (the authors' style).

Features: sparse non-negative random features with class-dependent activation rates (some dimensions dead).
Reference: loops over dimensions; for each, the class histogram of its active samples (np.bincount) and the per-class
summed activations, and in a second loop the |cosine| with every other active column; effective rank from
np.linalg.svd of F. Both run in this process, one after the other, each timed as the median of --repeats calls;
peak memory is the rise of the resident set (VmHWM, reset before each). A table splits the time by stage.

    python experiments/bench_metrics.py --num-samples 10000 --num-dims 2048
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import time

import numpy as np
import torch

from pyro_ncl import metrics as M
from pyro_ncl.train import resolve_device

EPS = 1e-5


def make_features(n: int, k: int, c: int, seed: int):
    """[n, k] float32 sparse non-negative features, [n] labels; ~10% of dims dead."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    rate = 0.5 * torch.rand(c, k, generator=g) ** 3
    rate[:, torch.rand(k, generator=g) < 0.1] = 0.0
    F = torch.rand(n, k, generator=g) * (torch.rand(n, k, generator=g) < rate[y])
    return F, y


# ------------------------------------------------------------------------------------------- per-dimension reference


def entropy(v: np.ndarray) -> float:
    p = v / v.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def authors_style_class_loop(F: torch.Tensor, y: torch.Tensor, dims) -> tuple:
    """(consistency, entropy) as the NCL authors' published evaluation loops them (for context, not the goal's
    reference): per dimension, |F| of the whole matrix, the mask of one column, a bincount, a .item() per value."""
    shares, entropies = [], []
    for d in dims:
        mask = F.abs()[:, d] > EPS
        if mask.sum() == 0:
            continue
        dist = y[mask].bincount()
        dist = dist / dist.sum()
        shares.append(dist.max().item())
        entropies.append(-(dist * (dist + EPS).log()).sum().item())
    return float(np.mean(shares)), float(np.mean(entropies))


def reference_effective_rank(F: np.ndarray) -> dict:
    """exp(H) of the normalised singular values from a full np.linalg.svd."""
    h = entropy(np.linalg.svd(F, compute_uv=False).astype(np.float64))
    return {"effective_rank": math.exp(h), "singular_value_entropy": h}


def reference_class_loop(F: np.ndarray, y: np.ndarray, c: int, dims) -> dict:
    """Per-dimension loop over `dims`: sparsity, active dims, consistency and the three entropies (means over the
    active dims among `dims`). F is column-major, as a per-dimension loop wants."""
    sizes = np.bincount(y, minlength=c)
    zeros, active, cons, e_sum, e_mean, e_freq = 0, 0, [], [], [], []
    for d in dims:
        col = F[:, d]
        on = np.abs(col) > EPS
        zeros += int((~on).sum())
        if not on.any():
            continue
        active += 1
        hist = np.bincount(y[on], minlength=c).astype(np.float64)
        sums = np.bincount(y[on], weights=np.abs(col[on]), minlength=c)
        cons.append(hist.max() / hist.sum())
        e_freq.append(entropy(hist))
        e_sum.append(entropy(sums))
        e_mean.append(entropy(sums / np.maximum(sizes, 1)))
    return {
        "sparsity": zeros / (F.shape[0] * len(dims)),
        "active_dims": active,
        "semantic_consistency": float(np.mean(cons)),
        "entropy_sum": float(np.mean(e_sum)),
        "entropy_mean": float(np.mean(e_mean)),
        "entropy_freq": float(np.mean(e_freq)),
    }


def reference_orthogonality_loop(F: np.ndarray, dims) -> dict:
    """Per-dimension loop over the active dims among `dims`: mean |cosine| with every other active column."""
    active = np.flatnonzero((np.abs(F) > EPS).any(0))
    A = F[:, active]
    norms = np.linalg.norm(A, axis=0)
    rows = []
    for d in np.intersect1d(dims, active):
        col = F[:, d]
        cos = np.abs(col @ A) / (np.linalg.norm(col) * norms)
        rows.append((cos.sum() - 1.0) / (len(norms) - 1))
    return {"orthogonality": float(np.mean(rows))}


# ------------------------------------------------------------------------------------------- timing and memory


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def measure(fn, repeats: int = 1):
    """(result, median seconds over `repeats` calls, peak resident-set rise in MiB over them, or None when the peak
    cannot be reset)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        base = _status_kb("VmRSS")
    except OSError:
        base = None
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    peak = (_status_kb("VmHWM") - base) / 1024 if base is not None else None
    return out, sorted(times)[len(times) // 2], peak


def fmt_mem(mb) -> str:
    return f"{mb:8.1f} MiB" if mb is not None else "     n/a"


def synchronize(device: torch.device) -> None:
    """Waits for queued GPU work, so that wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def suite_breakdown(F: torch.Tensor, y: torch.Tensor, c: int, chunk: int) -> dict:
    """Seconds of each stage of M.interpretability_suite, run one after the other as the suite runs them."""
    out, t = {}, time.perf_counter()

    def lap(name):
        nonlocal t
        synchronize(F.device)
        now = time.perf_counter()
        out[name], t = now - t, now

    counts, _, _, nonzero = M._class_stats(F, y, c, EPS, chunk)
    lap("class")
    G = M.gram(F, chunk, nonzero)
    lap("gram")
    M._orthogonality_from_gram(G, (counts.sum(0) > 0)[nonzero])
    lap("ortho")
    M._effective_rank_from_gram(G)
    lap("erank")
    return out


def main(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    F, y = make_features(args.num_samples, args.num_dims, args.num_classes, args.seed)
    A, Y = np.asfortranarray(F.numpy()), y.numpy()  # the reference gets contiguous columns
    K, C = args.num_dims, args.num_classes
    ref_dims = K if args.ref_dims <= 0 else min(args.ref_dims, K)
    dims = np.arange(K) if ref_dims == K else np.sort(np.random.default_rng(args.seed).choice(K, ref_dims, False))
    scale = K / ref_dims  # the loops' seconds are extrapolated linearly when they run on a subset of dims
    print(f"features {args.num_samples} x {K} float32, {C} classes; suite on {device}, reference numpy on cpu; "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    Fd, yd = F.to(device), y.to(device)
    M.interpretability_suite(Fd[:256], yd[:256], C)  # warm-up (lazy init)
    fast, t_fast, m_fast = measure(lambda: (M.interpretability_suite(Fd, yd, C, chunk=args.chunk),
                                            synchronize(device))[0], args.repeats)
    stages = [suite_breakdown(Fd, yd, C, args.chunk) for _ in range(args.repeats)]
    stages = {k: sorted(s[k] for s in stages)[len(stages) // 2] for k in stages[0]}

    ref, t_class, m_class = measure(lambda: reference_class_loop(A, Y, C, dims), args.repeats)
    ortho, t_ortho, m_ortho = measure(lambda: reference_orthogonality_loop(A, dims), args.repeats)
    erank, t_svd, m_svd = measure(lambda: reference_effective_rank(A), args.repeats)
    ref.update(ortho)
    ref.update(erank)
    t_class, t_ortho = t_class * scale, t_ortho * scale
    t_ref = t_class + t_ortho + t_svd

    # per-dimension metrics are compared on the reference's dims; the SVD-based ones on all dims
    per_dim = ("sparsity", "active_dims", "semantic_consistency", "entropy_sum", "entropy_mean", "entropy_freq")
    sub = fast if ref_dims == K else M.interpretability_suite(F[:, dims], y, C, chunk=args.chunk)
    print(f"\n{'metric':24s} {'vectorised':>14s} {'loop reference':>16s}")
    diffs = []
    for key in fast:
        note = ""
        if key in per_dim:
            diffs.append(abs(sub[key] - ref[key]))
            note = f"  (vectorised on the same {ref_dims} dims: {sub[key]:.6g})" if ref_dims < K else ""
        elif key == "orthogonality" and ref_dims < K:
            note = "  (reference: mean over the sampled dims' rows only; not compared)"
        else:
            diffs.append(abs(fast[key] - ref[key]) / max(abs(ref[key]), 1.0))
        print(f"{key:24s} {fast[key]:14.6g} {ref[key]:16.6g}{note}")
    max_diff = max(diffs)
    print(f"max difference (absolute, relative for values > 1): {max_diff:.2e}")

    ext = "" if ref_dims == K else f"   (loops timed on {ref_dims} dims, extrapolated x{scale:.1f})"
    rows = [
        ("class statistics: sparsity, active dims, consistency, 3 entropies",
         "per-dim bincount", t_class, "one blocked pass", stages["class"]),
        ("orthogonality", "per-dim |cos| row", t_ortho, "Gram + |cos|", stages["gram"] + stages["ortho"]),
        ("effective rank", "np.linalg.svd", t_svd, "eigvalsh(Gram)", stages["erank"]),
    ]
    print(f"\n{'stage':68s} {'reference':>26s} {'vectorised':>22s} {'ratio':>7s}")
    for name, rn, rt, vn, vt in rows:
        print(f"{name:68s} {rn:>17s} {rt:7.3f}s {vn:>14s} {vt:6.3f}s {rt / vt:6.1f}x")
    print("(the Gram is shared: the suite computes it once, for orthogonality and the effective rank)" + ext)

    print(f"\n{'':34s} {'time':>9s} {'peak RSS rise':>14s}")
    print(f"{'vectorised suite':34s} {t_fast:8.3f}s {fmt_mem(m_fast)}")
    print(f"{'reference (class + ortho + svd)':34s} {t_ref:8.3f}s {fmt_mem(max(m_class or 0, m_ortho or 0, m_svd or 0))}")
    ratio = t_ref / t_fast
    print(f"\nspeed-up of the suite: {ratio:.1f}x (goal >= 50x: {'met' if ratio >= 50 else 'NOT met'})")
    if args.authors_dims > 0:
        few = dims[:args.authors_dims]
        _, t_authors, _ = measure(lambda: authors_style_class_loop(F, y, few))
        t_authors *= K / len(few)
        print(f"for context, consistency + entropy looped as the NCL authors' evaluation does (|F| of the whole matrix "
              f"per dimension; timed on {len(few)} dims, extrapolated): {t_authors:.2f}s, "
              f"{t_authors / stages['class']:.0f}x the suite's class statistics")
    print(f"process peak RSS (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return {"vectorised_s": t_fast, "reference_s": t_ref, "speedup": ratio, "max_difference": max_diff,
            "stages": stages, "vectorised": fast, "reference": ref}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=10_000)
    p.add_argument("--num-dims", type=int, default=2048)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--ref-dims", type=int, default=0, help="dims the reference loop runs on (0 = all)")
    p.add_argument("--chunk", type=int, default=M.CHUNK)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--authors-dims", type=int, default=32,
                   help="dims to time the authors'-style loop on, for context (0 = skip)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per side; the median is reported")
    p.add_argument("--device", default="auto", help="where the suite runs: auto, cpu, cuda (the reference is numpy)")
    return p.parse_args(argv)


def cli(argv=None):
    return main(parse_args(argv))
