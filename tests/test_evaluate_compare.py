"""experiments/evaluate.py and experiments/compare.py on tiny trained runs."""
import importlib
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_ncl.probes import knn_accuracy
from pyro_ncl.trained_run import extract_split, load_run

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
FIGURES = ("top_dims.png", "retrieval.png", "sparsity.png", "tsne.png")

pytestmark = pytest.mark.skipif(not FASHION.exists(),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def script(name: str):
    module = importlib.import_module(f"pyro_ncl.commands.{name}")
    return module


@pytest.fixture(scope="module")
def runs(tiny_run):
    return {method: tiny_run(method) for method in ("bayesncl", "ncl")}


def test_evaluate_writes_metrics_and_figures_of_a_gated_run(runs):
    run_dir = runs["bayesncl"]
    own = (run_dir / "metrics.json").read_bytes()
    evaluate = script("evaluate")
    evaluate.main(evaluate.parser().parse_args([str(run_dir), "--device", "cpu", "--probe-epochs", "1",
                                                          "--tsne-samples", "200"]))
    assert (run_dir / "metrics.json").read_bytes() == own  # the run's own metrics are kept
    saved = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert saved["importance"].startswith("gate_frequency") and saved["method"] == "bayesncl"
    for key in ("semantic_consistency", "sparsity", "active_dims", "entropy_freq", "effective_rank", "orthogonality",
                "knn_accuracy", "linear_probe_backbone", "linear_probe_features", "open_gates", "retrieval_p1"):
        assert key in saved, key
    for key in ("knn_accuracy", "linear_probe_backbone", "linear_probe_features", "open_gates", "sparsity"):
        assert 0 <= saved[key] <= 1, key
    assert set(saved["retrieval"]) == {"16"} and set(saved["retrieval"]["16"]) == {"P@1", "P@3", "P@5", "P@10"}
    assert set(saved["feature_selection"]) == {"16"}
    # the checkpoint read in another process gives the features read here: the same kNN accuracy on the whole test
    # split (the run's own evaluation scored its first 500 images only). The tiny gated features tie often, so the
    # reference is the kNN of pyro_ncl.probes (its tie-breaking; checked against a loop in test_uncertainty.py)
    run = load_run(run_dir)
    train, test = extract_split(run, "train"), extract_split(run, "test")
    assert len(test["y"]) == 10_000
    assert saved["knn_accuracy"] == pytest.approx(knn_accuracy(train["features"], train["y"], test["features"],
                                                               test["y"], k=run.config.knn_k, num_classes=10),
                                                  abs=1e-12)
    # retrieval P@1 on all K = 16 dimensions, brute force: each test image's cosine nearest other test image.
    # Sparse gated features tie often (equal vectors), so any tied nearest neighbour may be the one retrieved.
    X, y = torch.nn.functional.normalize(test["features"].double(), dim=1), test["y"]
    surely, possibly = 0, 0
    for rows in torch.arange(len(y)).split(1000):
        sim = X[rows] @ X.T
        sim[torch.arange(len(rows)), rows] = -2.0
        tied = sim >= sim.max(1, keepdim=True).values - 1e-6
        same = y.unsqueeze(0) == y[rows].unsqueeze(1)
        surely += int((tied & ~same).sum(1).eq(0).sum())
        possibly += int((tied & same).any(1).sum())
    assert surely / len(y) - 1e-9 <= saved["retrieval_p1"] <= possibly / len(y) + 1e-9
    for name in (*FIGURES, "gate_frequency_by_class.png"):
        assert (run_dir / "eval" / name).stat().st_size > 1000, name


def test_evaluate_cli_on_an_ungated_run(runs, tmp_path):
    run_dir = runs["ncl"]
    cmd = [sys.executable, str(ROOT / "experiments" / "evaluate.py"), str(run_dir), "--device", "cpu",
           "--probe-epochs", "1", "--tsne-samples", "100"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert saved["importance"] == "column_sum" and "open_gates" not in saved
    for name in FIGURES:
        assert (run_dir / "eval" / name).stat().st_size > 1000, name
    assert not (run_dir / "eval" / "gate_frequency_by_class.png").exists()
    bad = subprocess.run(cmd[:2] + [str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "config.json" in bad.stderr


def _copy_run(src: Path, dst: Path, **changes) -> Path:
    """A run folder with config.json and metrics.json only, its config (and metrics) changed."""
    dst.mkdir(parents=True)
    config = json.loads((src / "config.json").read_text())
    metrics = json.loads((src / "metrics.json").read_text())
    config.update({k: v for k, v in changes.items() if k in config})
    metrics.update({k: v for k, v in changes.items() if k not in config})
    (dst / "config.json").write_text(json.dumps(config))
    (dst / "metrics.json").write_text(json.dumps(metrics))
    return dst


def test_compare_groups_seeds_and_settings(runs, tmp_path):
    b, n = runs["bayesncl"], runs["ncl"]
    dirs = [_copy_run(b, tmp_path / "b0", seed=0, knn_accuracy=0.30),
            _copy_run(b, tmp_path / "b1", seed=1, knn_accuracy=0.40),
            _copy_run(b, tmp_path / "b2", seed=2, channels_last=True, knn_accuracy=0.35),  # bookkeeping: pooled
            _copy_run(b, tmp_path / "pi", prior_prob=0.5),
            _copy_run(b, tmp_path / "det", guide="deterministic"),
            _copy_run(n, tmp_path / "n0")]
    (dirs[0] / "eval").mkdir()
    (dirs[0] / "eval" / "metrics.json").write_text(json.dumps({"retrieval_p1": 0.625, "knn_accuracy": 0.30}))
    (tmp_path / "unfinished").mkdir()
    compare = script("compare")
    stats = compare.main(compare.parser().parse_args([*map(str, dirs), str(tmp_path / "unfinished"),
                                                      "--out", str(tmp_path / "cmp")]))
    assert set(stats) == {"bayesncl", "bayesncl prior_prob=0.5", "bayesncl guide=deterministic", "ncl"}
    knn = stats["bayesncl"]["knn_accuracy"]
    assert knn["n"] == 3 and knn["mean"] == pytest.approx(0.35)
    assert knn["std"] == pytest.approx(statistics.stdev([0.30, 0.40, 0.35]))
    assert stats["bayesncl"]["retrieval_p1"]["n"] == 1  # from eval/metrics.json, where present
    assert stats["ncl"]["open_gates"]["n"] == 0

    table = (tmp_path / "cmp" / "comparison.md").read_text()
    lines = table.splitlines()
    assert lines[0].startswith("| group | runs | linear_probe_backbone |") and "open_gates" in lines[0]
    rows = {line.split("|")[1].strip(): line for line in lines[2:] if line.startswith("| ")}
    assert set(rows) == set(stats)
    assert "| bayesncl | 3 |" in rows["bayesncl"] and "0.350 ± 0.050 (3)" in rows["bayesncl"]
    assert "0.625 (1)" in rows["bayesncl"] and "–" in rows["ncl"] and "| ncl | 1 |" in rows["ncl"]
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 1000
    shutil.rmtree(tmp_path / "cmp")


def test_tsne_of_identical_features_is_skipped_not_a_crash(tmp_path):
    """scikit-learn's Barnes-Hut t-SNE crashes the process (segmentation fault) on features that are all the same
    (PCA's initialisation divides by their zero variance): evaluate.py draws a note instead."""
    evaluate = script("evaluate")
    F = torch.zeros(40, 6)
    F[:, 2] = 1.0  # a collapsed gate: every image the same one-hot feature
    evaluate.plot_tsne(F, torch.arange(40) % 4, samples=30, seed=0, path=tmp_path / "tsne.png")
    assert (tmp_path / "tsne.png").stat().st_size > 1000
