"""The frontier protocol: post-hoc baselines against brute force, the summary (mean ± std, Pareto front, goal
check) against hand-made points, and frontier.py end to end on tiny runs (resumable, refuses foreign runs, and its
measurements agree with each run's own end-of-run evaluation)."""
import importlib.util
import json
import math
import statistics
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyro_ncl.frontier import baseline_at, goal_check, mean_std, summarise
from pyro_ncl.metrics import class_selective_share
from pyro_ncl.posthoc import apply_thresholds, quantile_thresholds, rate_thresholds, top_k
from conftest import ROOT, TINY_RUN_FLAGS  # tests/ is on sys.path (pytest's default prepend import mode)


def sparse_features(n=300, k=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    F = torch.rand(n, k, generator=g) * (torch.rand(n, k, generator=g) < 0.4)
    F[:, -1] = 0  # a dimension never active
    return F / F.norm(dim=1, keepdim=True).clamp_min(1e-12)


def test_quantile_thresholds_match_numpy_per_column():
    F = sparse_features()
    for q in (0.0, 0.3, 0.9):
        t = quantile_thresholds(F, q)
        for d in range(F.shape[1]):
            positive = F[:, d][F[:, d] > 0].double().numpy()
            expected = np.quantile(positive, q) if positive.size else math.inf
            assert float(t[d]) == pytest.approx(expected, rel=1e-6)
        kept = apply_thresholds(F, t)
        for d in range(F.shape[1] - 1):  # at q: about a fraction 1 − q of each dimension's positives survive
            share = (kept[:, d] > 0).sum() / (F[:, d] > 0).sum()
            assert abs(float(share) - (1 - q)) < 0.05
    assert torch.equal(apply_thresholds(F, quantile_thresholds(F, 0.0)) > 0, F > 0)  # q = 0 removes nothing


def test_rate_thresholds_are_the_tightest_cap():
    F = sparse_features(n=200)
    for rate in (0.05, 0.2, 0.5):
        kept = apply_thresholds(F, rate_thresholds(F, rate)) > 0
        cap = math.floor(rate * F.shape[0])
        for d in range(F.shape[1]):
            positives = int((F[:, d] > 0).sum())
            assert int(kept[:, d].sum()) == min(positives, cap)  # continuous values: no ties


def test_top_k_keeps_each_rows_largest_entries():
    F = sparse_features()
    for k in (1, 3, 10):
        out = top_k(F, k)
        for i in range(0, F.shape[0], 17):
            row = F[i].tolist()
            keep = sorted(range(len(row)), key=lambda j: -row[j])[:k]
            expected = torch.tensor([row[j] if j in keep else 0.0 for j in range(len(row))])
            norm = expected.norm()
            expected = expected / norm if norm > 0 else expected
            assert torch.allclose(out[i], expected, atol=1e-6)


def test_posthoc_refuses_signed_features():
    with pytest.raises(ValueError, match="non-negative"):
        top_k(torch.randn(4, 3), 1)


def test_class_selective_share_by_brute_force():
    g = torch.Generator().manual_seed(1)
    y = torch.arange(90) % 3
    F = (torch.rand(90, 8, generator=g) < torch.rand(3, 8, generator=g)[y]).double()
    share = class_selective_share(F, y, 3)
    count = 0
    for d in range(8):
        freqs = [float(F[y == c, d].mean()) for c in range(3)]
        count += max(freqs) - min(freqs) > 0.5
    assert share == pytest.approx(count / 8)


def _row(design, variant, seed, knn, cons, param=None, knob=None, probe_h=0.8):
    return {"design": design, "variant": variant, "param": param, "knob": knob, "seed": seed, "knn_accuracy": knn,
            "semantic_consistency": cons, "linear_probe_backbone": probe_h}


def test_summary_means_pareto_and_goal_check():
    rows = [_row("ncl", "features", s, 0.70 + 0.01 * s, 0.50 + 0.02 * s) for s in range(3)]
    rows += [_row("ncl", "threshold", s, 0.69, 0.60 + 0.01 * s, param=0.5) for s in range(3)]
    rows += [_row("ncl", "threshold", s, 0.60, 0.80, param=0.9) for s in range(3)]
    rows += [_row("g", "mode", s, 0.705, 0.62 + 0.1 * s, knob=0.5) for s in range(2)]
    rows += [_row("g", "mode", s, 0.65, 0.60, knob=0.2) for s in range(2)]  # dominated
    rows += [_row("h", "mode", s, 0.69, 0.60, knob=1, probe_h=0.75) for s in range(2)]  # probe on h too low
    points = summarise(rows)
    by = {(p["curve"], p["param"], p["knob"]): p for p in points}
    ncl = by[("ncl", None, None)]
    assert ncl["knn_accuracy"] == pytest.approx(0.71) and ncl["seeds"] == [0, 1, 2]
    assert ncl["semantic_consistency_std"] == pytest.approx(statistics.stdev([0.50, 0.52, 0.54]))
    pareto = {key for key, p in by.items() if p["pareto"]}
    assert pareto == {("ncl", None, None), ("g (mode)", None, 0.5), ("ncl+threshold", 0.9, None)}
    checks = {c["curve"]: c for c in goal_check(points)}
    target = 0.52 + 0.5 * (1 - 0.52)
    g = checks["g (mode)"]
    assert g["target"] == pytest.approx(target) and g["best"]["knob"] == 0.5
    # the threshold front at kNN 0.705: between (0.69, 0.61) and NCL (0.71, 0.52), interpolated
    assert g["threshold"] == pytest.approx(0.61 + (0.52 - 0.61) * (0.705 - 0.69) / (0.71 - 0.69))
    assert g["top_k"] == pytest.approx(0.52)  # only NCL itself: more accurate than g, so its consistency
    assert g["beats_threshold"] and g["beats_top_k"] and not g["meets_target"]
    assert checks["h (mode)"]["best"] is None
    assert mean_std([1.0, float("nan"), None]) == (1.0, 0.0, 1)


def test_baseline_front_is_interpolated_on_its_pareto_points():
    points = summarise([_row("ncl", "features", 0, 0.70, 0.50), _row("ncl", "threshold", 0, 0.72, 0.40, param=0.1),
                        _row("ncl", "threshold", 0, 0.60, 0.70, param=0.5),
                        _row("ncl", "threshold", 0, 0.65, 0.55, param=0.3)])  # all four on the front
    curves = ("ncl", "ncl+threshold")
    assert baseline_at(points, curves, 0.65) == pytest.approx(0.55)
    assert baseline_at(points, curves, 0.62) == pytest.approx(0.70 + (0.55 - 0.70) * 0.02 / 0.05)
    assert baseline_at(points, curves, 0.80) == pytest.approx(0.40)  # beyond the most accurate point
    assert baseline_at(points, curves, 0.50) == pytest.approx(0.70)  # below the least accurate point
    assert baseline_at(points, ("other",), 0.7) is None


DESIGNS = """
ncl:
  flags: {method: ncl}
  posthoc: true
gate:
  flags: {method: bayesncl, guide: value, kl_weight: 0.01}
  knob: {prior_prob: [0.5, 0.1]}
"""


def _frontier(tmp_path, *extra):
    cmd = [sys.executable, str(ROOT / "experiments" / "frontier.py"), "--out", str(tmp_path / "front"),
           "--designs-file", str(tmp_path / "designs.yaml"), "--seeds", "0", "--jobs", "2", *extra,
           "--", *TINY_RUN_FLAGS]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.mark.slow
def test_changed_settings_default_missing_keys_and_accept_a_resolved_auto():
    from pyro_ncl.config import Config, changed_settings
    wanted = Config(method="ncl").resolved().to_dict()  # gpu_augment None: "auto", resolved by the run
    saved = dict(wanted, gpu_augment=False, num_workers=0, out="elsewhere")  # what a CPU run records
    assert changed_settings(saved, wanted) == []
    assert changed_settings(saved, dict(wanted, gpu_augment=True)) == ["gpu_augment"]  # asked for explicitly
    older = {k: v for k, v in saved.items() if k != "test_gate"}  # written before --test-gate existed
    assert changed_settings(older, wanted) == []
    assert changed_settings(older, dict(wanted, test_gate="mean", temperature=0.5)) == ["temperature", "test_gate"]


def test_a_mean_row_equal_to_the_mode_row_is_dropped():
    spec = importlib.util.spec_from_file_location("experiments_frontier", ROOT / "experiments" / "frontier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    drop_repeated_mean = module.drop_repeated_mean
    mode = {"variant": "mode", "param": None, "knn_accuracy": 0.7, "semantic_consistency": 0.6}
    same = dict(mode, variant="mean")
    other = dict(mode, variant="mean", semantic_consistency=0.61)
    assert drop_repeated_mean([mode, same]) == [mode]
    assert drop_repeated_mean([mode, other]) == [mode, other]
    assert drop_repeated_mean([same]) == [same]  # no mode row to compare with: kept


def test_frontier_end_to_end(tmp_path):
    (tmp_path / "designs.yaml").write_text(DESIGNS)
    result = _frontier(tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    front = tmp_path / "front"
    summary = json.loads((front / "frontier.json").read_text())
    curves = {p["curve"] for p in summary["points"]}
    assert curves == {"ncl", "ncl+threshold", "ncl+top-k", "ncl+rate-cap", "gate (mode)", "gate (mean)"}
    assert (front / "frontier.png").stat().st_size > 1000
    table = (front / "frontier.md").read_text()
    assert "★" in table and "## Goal check" in table and "gate (mode)" in table
    # the measured features agree with each run's own end-of-run evaluation (another process, same features)
    for run, variant in ((front / "runs" / "ncl" / "seed=0", "features"),
                         (front / "runs" / "gate" / "prior_prob=0.1" / "seed=0", "mode")):
        own = json.loads((run / "metrics.json").read_text())
        measured = next(r for r in json.loads((run / "frontier.json").read_text())["rows"] if r["variant"] == variant)
        for key in ("knn_accuracy", "semantic_consistency", "sparsity", "linear_probe_backbone",
                    "linear_probe_features"):
            assert measured[key] == pytest.approx(own[key], abs=1e-6), key
    # resumable: nothing is trained or measured again
    stamps = {p: p.stat().st_mtime_ns for p in front.rglob("metrics.json")}
    again = _frontier(tmp_path)
    assert again.returncode == 0 and again.stdout.count("done before") == 3, again.stdout
    assert stamps == {p: p.stat().st_mtime_ns for p in front.rglob("metrics.json")}
    # a folder holding a run with other settings is refused, not reused
    (tmp_path / "designs.yaml").write_text(DESIGNS.replace("kl_weight: 0.01", "kl_weight: 0.02"))
    refused = _frontier(tmp_path, "--designs", "gate")
    assert refused.returncode != 0 and "holds a run with other settings (kl_weight: 0.01 → 0.02)" in refused.stdout


def test_frontier_refuses_bad_designs(tmp_path):
    (tmp_path / "designs.yaml").write_text("gate:\n  flags: {out: elsewhere}\n")
    result = _frontier(tmp_path)
    assert result.returncode == 2 and "'out' is not a method setting" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "front" / "runs").exists()
