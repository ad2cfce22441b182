"""The command line, end to end, as a user runs it."""
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pyro_ncl
from guides import GUIDES
from models import PRIORS
from pyro_ncl.config import METHODS, Config
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
    """The default model and method on 512 images, evaluated on the first 1,000 of each split (how long it takes is
    for experiments/bench_step.py and the run's own train_seconds, not a test)."""
    result = run("--subset", "512", "--epochs", "1", "--eval-subset", "1000", "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-2000:]
    for name in OUTPUTS:
        assert (tmp_path / "run" / name).stat().st_size > 0, name
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("linear_probe_backbone", "linear_probe_features", "knn_accuracy", "semantic_consistency",
                "sparsity", "active_dims", "open_gates"):
        assert key in metrics
    assert 0.1 < metrics["linear_probe_backbone"] <= 1.0  # better than chance on 10 classes
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["prior"], config["guide"], config["subset"]) == ("bernoulli", "exact_k", 512)
    # a second run into a finished run's folder is refused and loses nothing: test_hostile_inputs.py ("out without
    # --overwrite", its folder hashed before and after)


@pytest.fixture(scope="module")
def run_svi():
    """experiments/run_svi.py as a module: its command line in this process (test_hostile_inputs.py checks the
    real process's exit status and one-line error)."""
    module = importlib.import_module("pyro_ncl.commands.run_svi")
    return module


def test_missing_dataset_is_one_clear_line(tmp_path, run_svi, capsys):
    assert run_svi.cli(["--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "nowhere") in lines[0] and "apt-get install" in lines[0]
    assert not (tmp_path / "out").exists()


def test_help_lists_every_registered_name(run_svi, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # no name broken across lines
    with pytest.raises(SystemExit) as done:
        run_svi.cli(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for names in (DATASETS.names(), PRIORS.names(), GUIDES.names(), LIKELIHOODS.names(), sorted(METHODS)):
        for name in names:
            assert name in text


@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_scenes_run_reports_background_leakage(tmp_path):
    """A run on the composed scenes (in process): its background leakage is the accuracy of a linear probe for the
    background type, recomputed here from the run's features (extracted batch by batch) and the scenes' background
    labels of the same images, with the run's probe settings: the same number, to rounding. The probe on the
    background labels themselves (one-hot) reads every background: the labels are aligned."""
    from pyro_ncl.probes import linear_probe
    run = pyro_ncl.run(Config(dataset="scenes", subset=512, epochs=1, width=4, hidden_dim=32, feature_dim=16,
                              probe_epochs=2, eval_subset=1000, quiet=True, out=str(tmp_path / "r")))
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics == run.metrics
    features = {}
    with torch.no_grad():
        for split in ("train", "test"):
            parts = [run.system.features(x)["features"] for x, _ in run.data.eval_batches(split, 256, "cpu")]
            features[split] = torch.cat(parts)[:1000]
    assert [len(f) for f in features.values()] == [512, 1000]
    backgrounds = {split: run.data.background(split)[:len(f)] for split, f in features.items()}
    num_backgrounds = int(max(b.max() for b in backgrounds.values())) + 1
    assert num_backgrounds > 1 and all(len(b.unique()) == num_backgrounds for b in backgrounds.values())
    probe = dict(num_classes=num_backgrounds, epochs=2, seed=run.config.seed, device="cpu")
    expected = linear_probe(features["train"], backgrounds["train"], features["test"], backgrounds["test"], **probe)
    assert metrics["background_leakage"] == pytest.approx(expected, abs=1e-12)
    assert metrics["background_leakage"] * 1000 == pytest.approx(round(metrics["background_leakage"] * 1000))
    onehot = {s: torch.nn.functional.one_hot(b, num_backgrounds).float() for s, b in backgrounds.items()}
    assert linear_probe(onehot["train"], backgrounds["train"], onehot["test"], backgrounds["test"], **probe) == 1.0
