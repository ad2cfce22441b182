"""Benchmark: the chunked, vectorised metric suite against a per-dimension numpy loop (the authors' style).

Features: sparse non-negative random features with class-dependent activation rates (some dimensions dead).
Reference: loop over dimensions; for each, the class histogram of its active samples (np.bincount), the per-class
summed activations, the |cosine| with every other active column; effective rank from np.linalg.svd of F.
Both run in this process, one after the other; peak memory is the rise of the resident set (VmHWM, reset before each).

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


def reference_effective_rank(F: np.ndarray) -> dict:
    """exp(H) of the normalised singular values from a full np.linalg.svd."""
    h = entropy(np.linalg.svd(F, compute_uv=False).astype(np.float64))
    return {"effective_rank": math.exp(h), "singular_value_entropy": h}


def reference_loop(F: np.ndarray, y: np.ndarray, c: int, dims) -> dict:
    """Per-dimension loop over `dims`; consistency/entropies/orthogonality are means over the active dims among them."""
    F = np.asfortranarray(F)  # contiguous columns, as a per-dimension loop wants
    sizes = np.bincount(y, minlength=c)
    active = np.array([(np.abs(F[:, d]) > EPS).any() for d in range(F.shape[1])])
    A = F[:, active]
    norms = np.linalg.norm(A, axis=0)
    zeros, cons, e_sum, e_mean, e_freq, ortho = 0, [], [], [], [], []
    for d in dims:
        col = F[:, d]
        on = np.abs(col) > EPS
        zeros += int((~on).sum())
        if not on.any():
            continue
        hist = np.bincount(y[on], minlength=c).astype(np.float64)
        sums = np.bincount(y[on], weights=np.abs(col[on]), minlength=c)
        cons.append(hist.max() / hist.sum())
        e_freq.append(entropy(hist))
        e_sum.append(entropy(sums))
        e_mean.append(entropy(sums / np.maximum(sizes, 1)))
        cos = np.abs(col @ A) / (np.linalg.norm(col) * norms)
        ortho.append((cos.sum() - 1.0) / (len(norms) - 1))
    return {
        "sparsity": zeros / (F.shape[0] * len(dims)),
        "active_dims": int(active[dims].sum()),
        "semantic_consistency": float(np.mean(cons)),
        "entropy_sum": float(np.mean(e_sum)),
        "entropy_mean": float(np.mean(e_mean)),
        "entropy_freq": float(np.mean(e_freq)),
        "orthogonality": float(np.mean(ortho)),
    }


# ------------------------------------------------------------------------------------------- timing and memory


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def measure(fn):
    """(result, seconds, peak resident-set rise in MiB or None when the peak cannot be reset)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        base = _status_kb("VmRSS")
    except OSError:
        base = None
    t = time.perf_counter()
    out = fn()
    sec = time.perf_counter() - t
    peak = (_status_kb("VmHWM") - base) / 1024 if base is not None else None
    return out, sec, peak


def fmt_mem(mb) -> str:
    return f"{mb:8.1f} MiB" if mb is not None else "     n/a"


def main(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    F, y = make_features(args.num_samples, args.num_dims, args.num_classes, args.seed)
    A, Y = F.numpy(), y.numpy()
    K = args.num_dims
    ref_dims = K if args.ref_dims <= 0 else min(args.ref_dims, K)
    dims = np.arange(K) if ref_dims == K else np.sort(np.random.default_rng(args.seed).choice(K, ref_dims, False))
    print(f"features {args.num_samples} x {K} float32, {args.num_classes} classes, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    M.interpretability_suite(F[:256], y[:256], args.num_classes)  # warm-up (lazy init)
    fast, t_fast, m_fast = measure(lambda: M.interpretability_suite(F, y, args.num_classes, chunk=args.chunk))

    # reference: the SVD once, the per-dimension loop on `dims` (extrapolated linearly to K when a subset)
    ref, t_loop, m_ref = measure(lambda: reference_loop(A, Y, args.num_classes, dims))
    erank, t_svd, m_svd = measure(lambda: reference_effective_rank(A))
    ref.update(erank)
    t_ref = t_svd + t_loop * K / ref_dims

    # per-dimension metrics are compared on the reference's dims; the SVD-based ones on all dims
    per_dim = ("sparsity", "active_dims", "semantic_consistency", "entropy_sum", "entropy_mean", "entropy_freq")
    sub = fast if ref_dims == K else M.interpretability_suite(F[:, dims], y, args.num_classes, chunk=args.chunk)
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
    print(f"max difference (absolute, relative for values > 1): {max(diffs):.2e}")

    print(f"\n{'':34s} {'time':>9s} {'peak RSS rise':>14s}")
    print(f"{'vectorised suite (chunked torch)':34s} {t_fast:8.2f}s {fmt_mem(m_fast)}")
    print(f"{'reference: np.linalg.svd':34s} {t_svd:8.2f}s {fmt_mem(m_svd)}")
    ext = "" if ref_dims == K else f" (timed on {ref_dims} dims, extrapolated x{K / ref_dims:.1f})"
    print(f"{'reference: per-dimension loop':34s} {t_loop * K / ref_dims:8.2f}s {fmt_mem(m_ref)}{ext}")
    print(f"{'reference total':34s} {t_ref:8.2f}s")
    ratio = t_ref / t_fast
    print(f"\nspeed-up: {ratio:.1f}x (goal >= 50x: {'met' if ratio >= 50 else 'NOT met'}); "
          f"without the SVD: {(t_loop * K / ref_dims) / t_fast:.1f}x")
    print(f"process peak RSS (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return {"vectorised_s": t_fast, "reference_s": t_ref, "speedup": ratio, "vectorised": fast, "reference": ref}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=10_000)
    p.add_argument("--num-dims", type=int, default=2048)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--ref-dims", type=int, default=0, help="dims the reference loop runs on (0 = all)")
    p.add_argument("--chunk", type=int, default=M.CHUNK)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
