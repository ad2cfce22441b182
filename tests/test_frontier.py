"""The frontier protocol: post-hoc baselines against brute force, the summary (mean ± std, Pareto front, goal
check) against hand-made points, and frontier.py end to end on tiny runs (resumable, refuses foreign runs, and its
measurements agree with each run's own end-of-run evaluation)."""
import datetime
import importlib
import json
import math
import statistics
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from pyro_ncl.frontier import baseline_at, baselines, mean_std, paired_margins, select, summarise
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


def test_summary_means_and_pareto():
    rows = [_row("ncl", "features", s, 0.70 + 0.01 * s, 0.50 + 0.02 * s) for s in range(3)]
    rows += [_row("ncl", "threshold", s, 0.69, 0.60 + 0.01 * s, param=0.5) for s in range(3)]
    rows += [_row("ncl", "threshold", s, 0.60, 0.80, param=0.9) for s in range(3)]
    rows += [_row("g", "mode", s, 0.705, 0.62 + 0.1 * s, knob=0.5) for s in range(2)]
    rows += [_row("g", "mode", s, 0.65, 0.60, knob=0.2) for s in range(2)]  # dominated
    points = summarise(rows)
    by = {(p["curve"], p["param"], p["knob"]): p for p in points}
    ncl = by[("ncl", None, None)]
    assert ncl["knn_accuracy"] == pytest.approx(0.71) and ncl["seeds"] == [0, 1, 2]
    assert ncl["semantic_consistency_std"] == pytest.approx(statistics.stdev([0.50, 0.52, 0.54]))
    pareto = {key for key, p in by.items() if p["pareto"]}
    assert pareto == {("ncl", None, None), ("g (mode)", None, 0.5), ("ncl+threshold", 0.9, None)}
    assert mean_std([1.0, float("nan"), None]) == (1.0, 0.0, 1)


def test_margins_are_paired_by_seed_at_each_seeds_own_knn():
    """Seed s of a design against NCL's seed-s fronts read at the design's seed-s kNN, by hand: seed 0's threshold
    front runs from (0.60, 0.80) to NCL (0.70, 0.50), seed 1's from (0.62, 0.84) to (0.72, 0.54)."""
    rows = []
    for s in (0, 1):
        rows += [_row("ncl", "features", s, 0.70 + 0.02 * s, 0.50 + 0.04 * s),
                 _row("ncl", "threshold", s, 0.60 + 0.02 * s, 0.80 + 0.04 * s, param=0.5),
                 _row("ncl", "top-k", s, 0.65 + 0.02 * s, 0.55 + 0.04 * s, param=4),
                 _row("ncl_topk", "features", s, 0.68, 0.60 + 0.1 * s, knob=4)]
    rows += [_row("g", "mode", 0, 0.65, 0.70, knob=1), _row("g", "mode", 1, 0.70, 0.58, knob=1)]
    margins = paired_margins(rows, ("g", 1, "mode", None), baselines())
    thr0 = 0.80 + (0.50 - 0.80) * (0.65 - 0.60) / 0.10                      # 0.65
    thr1 = 0.84 + (0.54 - 0.84) * (0.70 - 0.62) / 0.10                      # 0.60
    assert margins["threshold"]["margins"] == pytest.approx([0.70 - thr0, 0.58 - thr1])
    assert margins["threshold"]["wins"] == 1 and margins["threshold"]["n"] == 2  # +0.05 and −0.02
    # top-k front: seed 0 (0.65, 0.55) and NCL (0.70, 0.50); seed 1 (0.67, 0.59) and (0.72, 0.54)
    top1 = 0.59 + (0.54 - 0.59) * (0.70 - 0.67) / 0.05
    assert margins["top_k"]["margins"] == pytest.approx([0.70 - 0.55, 0.58 - top1])
    # every post-hoc cut together: the better of the two fronts at each kNN
    assert margins["posthoc"]["margins"] == pytest.approx([0.70 - thr0, 0.58 - max(thr1, top1)])
    assert margins["trained_top_k"]["margins"] == pytest.approx([0.70 - 0.60, 0.58 - 0.70])
    assert margins["threshold"]["mean"] == pytest.approx(statistics.fmean([0.70 - thr0, 0.58 - thr1]))


def test_selection_takes_the_most_consistent_point_within_one_point_of_ncl():
    rows = [_row("ncl", "features", s, 0.70, 0.50) for s in range(2)]
    rows += [_row("g", "mode", s, 0.695, 0.60, knob=1) for s in range(2)]
    rows += [_row("g", "mode", s, 0.60, 0.90, knob=2) for s in range(2)]   # more consistent, too inaccurate
    rows += [_row("g", "mean", s, 0.70, 0.55, knob=1) for s in range(2)]
    rows += [_row("h", "mode", s, 0.75, 0.70, knob=1, probe_h=0.70) for s in range(2)]  # linear (h) too low
    chosen = select(rows, summarise(rows))
    assert (chosen["g"]["point"]["knob"], chosen["g"]["point"]["variant"]) == (1, "mode") and chosen["g"]["eligible"]
    assert chosen["g"]["margins"]["threshold"]["margins"] == pytest.approx([0.10, 0.10])
    assert not chosen["h"]["eligible"]


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
  flags: {method: bayesncl, guide: exact_k, kl_weight: 0.01}
  knob: {prior_prob: [0.5, 0.1]}
  candidate: true
"""


FRONTIER = ROOT / "experiments" / "frontier.py"


def _argv(tmp_path, *extra):
    return ["--out", str(tmp_path / "front"), "--designs-file", str(tmp_path / "designs.yaml"), "--seeds", "0",
            "--jobs", "2", *extra, "--", *TINY_RUN_FLAGS]


def _frontier(tmp_path, *extra):
    """frontier.py as a user runs it: a process of its own."""
    return subprocess.run([sys.executable, str(FRONTIER), *_argv(tmp_path, *extra)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


@pytest.fixture
def frontier_here(capsys, monkeypatch):
    """``frontier_here(tmp_path, *extra)``: frontier.py's ``cli`` in this process (its runs and measurements are still
    processes of their own) → returncode, stdout, stderr, like ``_frontier``."""
    module = importlib.import_module("pyro_ncl.commands.frontier")

    def call(tmp_path, *extra):
        argv = _argv(tmp_path, *extra)
        monkeypatch.setattr(sys, "argv", [str(FRONTIER), *argv])  # the command its reports quote
        capsys.readouterr()
        code = module.cli(argv)
        out, err = capsys.readouterr()
        return types.SimpleNamespace(returncode=code, stdout=out, stderr=err)
    return call


@pytest.mark.slow
def test_changed_settings_default_missing_keys_and_accept_a_resolved_auto():
    from pyro_ncl.config import Config, changed_settings
    wanted = Config(method="ncl").resolved().to_dict()  # gpu_augment None: "auto", resolved by the run
    saved = dict(wanted, gpu_augment=False, num_workers=0, out="elsewhere")  # what a CPU run records
    assert changed_settings(saved, wanted) == []
    assert changed_settings(saved, dict(wanted, gpu_augment=True)) == ["gpu_augment"]  # asked for explicitly
    older = {k: v for k, v in saved.items() if k != "test_gate"}  # written before --test-gate existed
    assert changed_settings(older, wanted) == []
    assert changed_settings(older, dict(wanted, test_gate="mean", temperature=0.5)) == ["temperature"]  # ungated
    gated = Config(method="bayesncl").resolved().to_dict()
    assert changed_settings(gated, dict(gated, test_gate="mean", kl_weight=0.5)) == ["kl_weight", "test_gate"]
    # an ungated run is the same run whatever the gate's settings (nothing reads them)
    assert changed_settings(dict(wanted, kl_weight=0.01, gate_lr=2.0), wanted) == []


def test_frontier_end_to_end(tmp_path, frontier_here):
    """Selection on the validation split (the test split unread), then the final stage on the test split; the
    measured features agree with each run's own end-of-run evaluation (of the validation split); resumable;
    a folder holding another run's settings is refused. The first call is a process of its own, as a user runs it;
    the later ones call frontier.py's command line in this process (a new process would add nothing), and every run
    evaluates the first 500 images of each split (TINY_RUN_FLAGS), the test split's too in the final stage."""
    (tmp_path / "designs.yaml").write_text(DESIGNS)
    result = _frontier(tmp_path, "--val-size", "500")
    assert result.returncode == 0, result.stderr[-2000:]
    front = tmp_path / "front"
    summary = json.loads((front / "frontier.json").read_text())
    curves = {p["curve"] for p in summary["points"]}
    assert curves == {"ncl", "ncl+threshold", "ncl+top-k", "ncl+rate-cap", "gate (mode)", "gate (mean)"}
    assert (front / "frontier.png").stat().st_size > 1000
    table = (front / "frontier.md").read_text()
    assert "★" in table and "## Selection (validation split)" in table and "gate (mode)" in table
    selection = json.loads((front / "selection.json").read_text())
    assert set(selection["designs"]) == {"gate"} and selection["candidates"] == ["gate"]
    for run, variant in ((front / "runs" / "ncl" / "seed=0", "features"),
                         (front / "runs" / "gate" / "prior_prob=0.1" / "seed=0", "mode")):
        record = json.loads((run / "frontier.json").read_text())
        assert set(record["splits"]) == {"val"}  # the test split is not read in the selection stage
        assert json.loads((run / "config.json").read_text())["val_size"] == 500
        own = json.loads((run / "metrics.json").read_text())
        measured = next(r for r in record["splits"]["val"] if r["variant"] == variant)
        for key in ("knn_accuracy", "semantic_consistency", "weighted_consistency", "sparsity",
                    "linear_probe_backbone", "linear_probe_features"):
            assert measured[key] == pytest.approx(own[key], abs=1e-6), key
    # resumable: nothing is trained or measured again
    stamps = {p: p.stat().st_mtime_ns for p in front.rglob("metrics.json")}
    again = frontier_here(tmp_path, "--val-size", "500")
    assert again.returncode == 0 and again.stdout.count("done before") == 3, again.stdout
    assert stamps == {p: p.stat().st_mtime_ns for p in front.rglob("metrics.json")}
    # --knob: a design's knob over other values, in the same folders (here one already run: nothing trains)
    one = frontier_here(tmp_path, "--val-size", "500", "--knob", "gate=0.1")
    assert one.returncode == 0 and one.stdout.count("done before") == 2 and "[2/2]" in one.stdout, one.stdout
    assert stamps == {p: p.stat().st_mtime_ns for p in front.rglob("metrics.json")}
    # the final stage: the chosen point and NCL on the test split, nothing retrained
    final = frontier_here(tmp_path, "--val-size", "500", "--final", "--final-seeds", "0")
    assert final.returncode == 0, final.stderr[-2000:]
    assert stamps == {p: p.stat().st_mtime_ns for p in front.rglob("metrics.json")}
    # the final reads the latest selection.json: the --knob run above selected among its one value
    chosen = json.loads((front / "selection.json").read_text())["designs"]["gate"]["knob"]
    assert chosen == 0.1
    record = json.loads((front / "runs" / "gate" / f"prior_prob={chosen}" / "seed=0" / "frontier.json").read_text())
    assert set(record["splits"]) == {"val", "test"}
    report = (front / "final.md").read_text()
    assert "test split" in report and "## Goal check of the default `gate`" in report
    # the entropy beside its doubt (the part on z's non-zero entries), as the run measured them on the test split
    header_row = next(line for line in report.splitlines() if line.startswith("| curve |")).split(" | ")
    variant = json.loads((front / "selection.json").read_text())["designs"]["gate"]["variant"]
    gate_row = next(line for line in report.splitlines() if line.startswith(f"| gate ({variant})")).split(" | ")
    measured = next(r for r in record["splits"]["test"] if r["variant"] == variant)
    for column, key in (("entropy / image", "posterior_entropy"), ("doubt / image", "doubt_entropy"),
                        ("uncertain (active) images", "uncertain_active_images")):
        assert float(gate_row[header_row.index(column)]) == pytest.approx(measured[key], abs=0.01), column
    # a folder holding a run with other settings is refused, not reused
    (tmp_path / "designs.yaml").write_text(DESIGNS.replace("kl_weight: 0.01", "kl_weight: 0.02"))
    refused = frontier_here(tmp_path, "--val-size", "500", "--designs", "ncl,gate")
    assert refused.returncode != 0 and "holds a run with other settings (kl_weight: 0.01 → 0.02)" in refused.stdout


def test_frontier_refuses_bad_designs(tmp_path, frontier_here):
    """Refused in one line before any run starts (frontier.py's command line, in this process)."""
    (tmp_path / "designs.yaml").write_text("gate:\n  flags: {out: elsewhere}\n")
    result = frontier_here(tmp_path)
    assert result.returncode == 2 and "'out' is not a method setting" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "front" / "runs").exists()
    (tmp_path / "designs.yaml").write_text(DESIGNS)
    for knob, message in (("gate=1.5", "--knob gate=1.5: --prior-prob must lie in (0, 1), got 1.5"),
                          ("gate=lots", "--knob gate=lots: --prior-prob must be a number, got the string 'lots'"),
                          ("ncl=2", "--knob ncl=2: design 'ncl' has no knob in the designs file"),
                          ("other=2", "--knob other=2: design 'other' is not among the designs run (ncl, gate)"),
                          ("gate", "--knob must be DESIGN=V1,V2,..., got 'gate'")):
        result = frontier_here(tmp_path, "--knob", knob)
        assert result.returncode == 2 and message in result.stderr, (knob, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "front" / "runs").exists()
    result = frontier_here(tmp_path, "--final")
    assert result.returncode == 2 and "selection.json is missing" in result.stderr
    for lengths, message in ((("--lengths", "2,3"), "--epochs belongs to --lengths"),  # TINY_RUN_FLAGS has --epochs
                             (("--lengths", "2,x"), "--lengths must be comma-separated integers, got '2,x'")):
        result = frontier_here(tmp_path, *lengths)
        assert result.returncode == 2 and message in result.stderr, (lengths, result.stderr)
    assert not (tmp_path / "front" / "runs").exists()


def test_the_final_reports_each_designs_chosen_point_not_the_last_of_a_sweep():
    """ncl_topk is measured over its whole sweep in the final (a front), but its reported point is the one the
    validation split chose (k 6 here), whatever order the sweep comes in; NCL is never a reported design."""
    from pyro_ncl.frontier import reported_points
    points = [{"design": "ncl", "knob": None, "variant": "features"},
              *({"design": "ncl_topk", "knob": k, "variant": "features"} for k in (3, 4, 6, 8)),
              {"design": "gate", "knob": 0.1, "variant": "mean"}, {"design": "gate", "knob": 0.1, "variant": "mode"}]
    selection = {"designs": {"ncl_topk": {"knob": 6, "variant": "features"},
                             "gate": {"knob": 0.1, "variant": "mode"}}}
    got = [(p["design"], p["knob"], p["variant"]) for p in reported_points(points, selection)]
    assert got == [("ncl_topk", 6, "features"), ("gate", 0.1, "mode")]


def test_budget_settings_count_only_for_parts_with_a_budget():
    """A run without a budget (NCL, relaxed_st) is the same run whatever --budget-schedule says; for the top-k
    activation and the budgeted gates (``budgeted = True``) it is another run."""
    from pyro_ncl.config import Config, changed_settings, uses_budget
    for method, budgeted in (("ncl", False), ("cl", False), ("ncl_topk", True), ("bayesncl", True)):
        wanted = Config(method=method).resolved().to_dict()
        assert uses_budget(wanted) is budgeted
        saved = dict(wanted, budget_schedule="geometric", budget_start=64)  # the wanted start is auto: not compared
        assert changed_settings(saved, wanted) == (["budget_schedule"] if budgeted else [])
        pinned = dict(wanted, budget_start=128)
        assert changed_settings(saved, pinned) == (["budget_schedule", "budget_start"] if budgeted else [])
    relaxed = Config(method="bayesncl", guide="relaxed_st").resolved().to_dict()
    assert changed_settings(dict(relaxed, budget_schedule="geometric"), relaxed) == []


def test_learning_curve_reads_each_length_against_its_own_ncl_runs(tmp_path):
    """``--lengths``: a design's margin at each training length is read against the post-hoc cuts of the NCL runs of
    that length, seed by seed, by hand: NCL's threshold front runs from (0.50, 0.70) to (0.60, 0.40) at 1 epoch and
    from (0.70, 0.90) to (0.80, 0.50) at 3 epochs (the 1-epoch front read at the 3-epoch gate's kNN would give 0.40,
    a margin of 0.15); a tie is broken as on the selection page; curve.md, curve.json and curve.png are written, and
    two entries recorded the same day keep a figure each."""
    from pyro_ncl.designs import load_designs, plan
    from pyro_ncl.frontier_report import learning_curve, record_page
    from pyro_ncl.measure import MEASURE_VERSION

    (tmp_path / "designs.yaml").write_text("ncl:\n  flags: {method: ncl}\n  posthoc: true\n"
                                           "g:\n  flags: {method: bayesncl}\n  candidate: true\n")
    designs = load_designs(tmp_path / "designs.yaml")
    out = tmp_path / "front"
    jobs = plan(designs, [0, 1], out, [1, 3])
    assert sorted({(j["design"], j["epochs"], j["seed"], j["settings"]["epochs"]) for j in jobs}) == [
        (d, e, s, e) for d in ("g", "ncl") for e in (1, 3) for s in (0, 1)]
    ncl = {1: ((0.60, 0.40), (0.50, 0.70)), 3: ((0.80, 0.50), (0.70, 0.90))}  # features, threshold 0.5
    gate = {1: (0.595, 0.50), 3: (0.79, 0.55)}

    def row(variant, knn, cons, param=None):
        return {"variant": variant, "param": param, "knn_accuracy": knn, "semantic_consistency": cons,
                "weighted_consistency": cons / 2, "linear_probe_backbone": 0.8}
    for job in jobs:
        e, s = job["epochs"], job["seed"]
        if job["design"] == "ncl":
            rows = [row("features", *ncl[e][0]), row("threshold", *ncl[e][1], param=0.5)]
        else:
            rows = [row("mode", gate[e][0], gate[e][1] + 0.02 * s), row("mean", gate[e][0], gate[e][1] + 0.02 * s)]
        job["dir"].mkdir(parents=True)
        (job["dir"] / "frontier.json").write_text(json.dumps({"version": MEASURE_VERSION, "posthoc": job["posthoc"],
                                                              "splits": {"val": rows}}))
    learning_curve(jobs, out, "# Learning curve\n\nCommand: `python x.py`; abc; CPU: test", [1, 3])
    entries = json.loads((out / "curve.json").read_text())["entries"]
    got = {(e["design"], e["epochs"]): e for e in entries}
    assert set(got) == {("ncl", 1), ("ncl", 3), ("g", 1), ("g", 3)}
    for e, (front_knn, front_cons) in ((1, (0.50, 0.70)), (3, (0.70, 0.90))):
        (knn_ncl, cons_ncl), (knn, cons) = ncl[e][0], gate[e]
        level = front_cons + (cons_ncl - front_cons) * (knn - front_knn) / (knn_ncl - front_knn)
        margins = got[("g", e)]["margins"]["posthoc"]
        assert margins["margins"] == pytest.approx([cons - level, cons + 0.02 - level]), e
        assert got[("g", e)]["weighted_margins"]["posthoc"]["margins"] == pytest.approx(
            [cons / 2 - level / 2, (cons + 0.02) / 2 - level / 2]), e
        assert got[("ncl", e)]["point"]["knn_accuracy"] == pytest.approx(knn_ncl)
    assert (out / "curve.png").stat().st_size > 1000
    # the mean and the mode tie; the selection page's order breaks the tie (variants alphabetically: the mean)
    assert "| g | 3 | test gate mean |" in (out / "curve.md").read_text()
    assert [got[("g", e)]["point"]["variant"] for e in (1, 3)] == ["mean", "mean"]
    page = tmp_path / "docs" / "curve.md"
    first = record_page(page, "one", out / "curve.md", out / "curve.png")
    second = record_page(page, "two", out / "curve.md", out / "curve.png")
    day = datetime.date.today().isoformat()
    assert f"(curve-{day}.png)" in first and f"(curve-{day}-2.png)" in second
    assert sorted(p.name for p in page.parent.glob("*.png")) == [f"curve-{day}-2.png", f"curve-{day}.png"]
