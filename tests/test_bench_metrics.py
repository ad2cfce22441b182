"""experiments/bench_metrics.py on tiny features: the suite it times and the per-dimension loop reference it prints
both agree with a per-dimension loop written here from the metrics' definitions (METHODS.md, "Metrics")."""
import importlib
import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EPS = 1e-5
PER_DIM = ("sparsity", "active_dims", "semantic_consistency", "entropy_sum", "entropy_mean", "entropy_freq")


@pytest.fixture(scope="module")
def bench():
    module = importlib.import_module("pyro_ncl.commands.bench_metrics")
    return module


def shannon(weights):
    p = np.asarray(weights, dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


def metrics_by_hand(F, y, num_classes, dims):
    """F [N, K] float64, y [N]: on the dims ``dims``, the share of inactive entries (|F| ≤ 1e-5), the active dims (an
    active entry in some row), and means over the active dims of: the largest class's share of a dim's active rows
    (consistency); the entropies of its class histogram of active rows (freq), of its per-class sums of |F| (sum) and
    of those sums divided by the class sizes (mean). On all dims: the mean over active dims of the mean |cosine| with
    every other active dim (orthogonality), and exp of the entropy of the normalised singular values of F (effective
    rank)."""
    sizes = [int((y == c).sum()) for c in range(num_classes)]
    inactive, active, cons, e_freq, e_sum, e_mean = 0, 0, [], [], [], []
    for d in dims:
        on = [i for i in range(len(y)) if abs(F[i, d]) > EPS]
        inactive += len(y) - len(on)
        if not on:
            continue
        active += 1
        hist = [sum(1 for i in on if y[i] == c) for c in range(num_classes)]
        sums = [sum(abs(F[i, d]) for i in on if y[i] == c) for c in range(num_classes)]
        cons.append(max(hist) / len(on))
        e_freq.append(shannon(hist))
        e_sum.append(shannon(sums))
        e_mean.append(shannon([s / max(n, 1) for s, n in zip(sums, sizes)]))
    out = {"sparsity": inactive / (len(y) * len(dims)), "active_dims": active,
           "semantic_consistency": np.mean(cons), "entropy_freq": np.mean(e_freq), "entropy_sum": np.mean(e_sum),
           "entropy_mean": np.mean(e_mean)}
    live = [d for d in range(F.shape[1]) if (np.abs(F[:, d]) > EPS).any()]
    rows = []
    for d in live:
        cosines = [abs(F[:, d] @ F[:, e]) / (np.linalg.norm(F[:, d]) * np.linalg.norm(F[:, e])) for e in live if e != d]
        rows.append(np.mean(cosines))
    out["orthogonality"] = np.mean(rows)
    out["singular_value_entropy"] = shannon(np.linalg.svd(F, compute_uv=False))
    out["effective_rank"] = math.exp(out["singular_value_entropy"])
    return out


@pytest.mark.parametrize("ref_dims", [0, 24])
def test_suite_and_loop_reference_agree_with_a_loop_written_here(bench, ref_dims, capsys):
    # 1,300 rows: several CPU blocks of 512 rows and two Gram chunks of 1,024
    args = bench.parse_args(["--num-samples", "1300", "--num-dims", "64", "--num-classes", "5", "--chunk", "1024",
                             "--ref-dims", str(ref_dims), "--repeats", "1", "--device", "cpu", "--authors-dims", "0"])
    out = bench.main(args)
    assert out["max_difference"] < 1e-6  # the script's own comparison
    assert "speed-up of the suite" in capsys.readouterr().out
    F, y = bench.make_features(1300, 64, 5, args.seed)
    F, y = F.numpy().astype(np.float64), y.numpy()
    assert 0.3 < (np.abs(F) <= EPS).mean() < 0.99 and (np.abs(F) <= EPS).all(0).any()  # sparse, some dims dead
    full = metrics_by_hand(F, y, 5, range(64))
    assert set(out["vectorised"]) == set(full)
    for key, want in full.items():  # the suite, on all 64 dims
        assert out["vectorised"][key] == pytest.approx(want, rel=1e-6, abs=1e-9), key
    # the script's printed reference: on the dims it sampled (all, or 24 drawn with its seed)
    dims = range(64) if not ref_dims else np.sort(np.random.default_rng(args.seed).choice(64, ref_dims, False))
    sampled = metrics_by_hand(F, y, 5, dims)
    for key in PER_DIM:
        assert out["reference"][key] == pytest.approx(sampled[key], rel=1e-6, abs=1e-9), key
    for key in ("effective_rank", "singular_value_entropy", *(("orthogonality",) if not ref_dims else ())):
        assert out["reference"][key] == pytest.approx(full[key], rel=1e-6, abs=1e-9), key
