"""The command line, end to end, as a user runs it."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guides import GUIDES
from models import PRIORS
from pyro_ncl.config import METHODS
from pyro_ncl.data import DATASETS
from pyro_ncl.likelihoods import LIKELIHOODS

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "run_svi.py"
FASHION = Path("/usr/share/datasets/fashion-mnist")
OUTPUTS = ("config.json", "log.csv", "checkpoint.pt", "metrics.json", "loss.png")


def run(*args, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_short_run_writes_every_output(tmp_path):
    start = time.perf_counter()
    result = run("--subset", "512", "--epochs", "1", "--out", str(tmp_path / "run"))
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-2000:]
    assert elapsed < 60, f"took {elapsed:.0f} s"
    for name in OUTPUTS:
        assert (tmp_path / "run" / name).stat().st_size > 0, name
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("linear_probe_backbone", "linear_probe_features", "knn_accuracy", "semantic_consistency",
                "sparsity", "active_dims", "open_gates"):
        assert key in metrics
    assert 0.1 < metrics["linear_probe_backbone"] <= 1.0  # better than chance on 10 classes
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["prior"], config["guide"], config["subset"]) == ("bernoulli", "exact_k", 512)
    # a second run into the same folder is refused and loses nothing
    before = (tmp_path / "run" / "metrics.json").read_bytes()
    again = run("--subset", "512", "--epochs", "1", "--out", str(tmp_path / "run"))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert (tmp_path / "run" / "metrics.json").read_bytes() == before


def test_missing_dataset_is_one_clear_line(tmp_path):
    result = run("--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "nowhere") in lines[0] and "apt-get install" in lines[0]
    assert not (tmp_path / "out").exists()


def test_help_lists_every_registered_name():
    result = run("--help")
    text = " ".join(result.stdout.split())
    for names in (DATASETS.names(), PRIORS.names(), GUIDES.names(), LIKELIHOODS.names(), sorted(METHODS)):
        for name in names:
            assert name in text


@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_scenes_run_reports_background_leakage(tmp_path):
    result = run("--dataset", "scenes", "--subset", "512", "--epochs", "1", "--width", "4", "--hidden-dim", "32",
                 "--feature-dim", "16", "--probe-epochs", "2", "--eval-subset", "1000", "--out", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert 0.0 <= metrics["background_leakage"] <= 1.0
