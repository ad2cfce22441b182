"""Your own images end to end (issue 19): a run started from Python on a generated folder, the README's commands
(labelled folder; unlabelled + labelled; extraction), features out equal to those the evaluation scored, and the
run's guarantees from Python (one-line ValueError before anything is written, the lock, resume)."""
import importlib
import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch

import pyro_ncl
from pyro_ncl.config import Config
from pyro_ncl.trained_run import load_run
from pyro_ncl.probes import knn_accuracy
from pyro_ncl.run_folder import RunLock, read_metrics
from test_data_folder import make_tree, write_image

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(epochs=1, batch_size=8, width=4, hidden_dim=32, feature_dim=16, probe_epochs=2, knn_k=5, quiet=True)
TINY_FLAGS = ["--epochs", "1", "--batch-size", "8", "--width", "4", "--hidden-dim", "32", "--feature-dim", "16",
              "--probe-epochs", "2", "--knn-k", "5", "--quiet"]


def script(name: str):
    module = importlib.import_module(f"pyro_ncl.commands.{name}")
    return module


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("own") / "images")


@pytest.fixture(scope="module")
def trained(tree, tmp_path_factory):
    """A tiny BayesNCL run on the folder, started from Python."""
    return pyro_ncl.run(Config(dataset="folder", data_root=str(tree), out=str(tmp_path_factory.mktemp("run")), **TINY))


def test_a_run_from_python_returns_the_trained_run(trained):
    assert trained.metrics == read_metrics(trained.path / "metrics.json")  # its values: the next test
    assert not trained.system.training and trained.gated and trained.config.dataset == "folder"
    saved = json.loads((trained.path / "config.json").read_text())
    assert saved["channels"] == 3 and saved["image_mean"] == trained.data.resolved_options["image_mean"]
    # reloaded, the run reads its data exactly as it trained: same normalisation, same features
    again = load_run(trained.path)
    x, _ = next(again.data.eval_batches("test", 64, "cpu"))
    y, _ = next(trained.data.eval_batches("test", 64, "cpu"))
    assert torch.equal(x, y)
    assert all(torch.equal(a, b) for a, b in zip(again.encode(x).values(), trained.encode(x).values()))


def features_by_hand(run, split, batch_size, batches=None):
    """The system's features of a split's images (the first ``batches`` batches), batch by batch in the evaluation's
    order (eval mode), with the labels: what the end-of-run evaluation scores."""
    parts = {}
    run.system.eval()
    with torch.no_grad():
        for _, (x, y) in zip(range(batches or 10 ** 9), run.data.eval_batches(split, batch_size, "cpu")):
            for key, value in {**run.system.features(x), "labels": y}.items():
                parts.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


def test_extracted_features_are_those_the_evaluation_scored(trained, tmp_path):
    """extract.py's arrays against the system's features computed here batch by batch (bit for bit at the run's
    batch size), and the kNN accuracy in metrics.json recomputed from the exported features."""
    extract_py = script("extract")
    arrays = {}
    for split in ("train", "test"):
        out, small = tmp_path / f"{split}.npz", tmp_path / f"{split}_small.npz"
        extract_py.main(extract_py.parser().parse_args([str(trained.path), "--split", split, "--out", str(out),
                                                        "--device", "cpu", "--quiet"]))
        extract_py.main(extract_py.parser().parse_args([str(trained.path), "--split", split, "--out", str(small),
                                                        "--device", "cpu", "--batch-size", "5", "--quiet"]))
        arrays[split], batched = dict(np.load(out, allow_pickle=False)), dict(np.load(small, allow_pickle=False))
        scored = features_by_hand(trained, split, trained.config.eval_batch_size)
        for key in ("h", "z", "features", "gate", "probs"):
            # the run's own batch size: bit for bit; other batch sizes: up to the kernels' rounding (on some CPUs a
            # matrix product's summation order depends on the number of rows)
            assert np.array_equal(arrays[split][key], scored[key]), (split, key)
            assert np.allclose(batched[key], scored[key], rtol=1e-5, atol=1e-6), (split, key)
        assert np.array_equal(arrays[split]["labels"], scored["labels"])
    names = arrays["test"]["names"]
    assert names[0].startswith("test/ant/") and len(names) == len(arrays["test"]["labels"]) == 9
    # the metric in metrics.json, recomputed from the exported features (these tiny features tie at the k-th
    # neighbour: the kNN of pyro_ncl.probes, whose tie-breaking the run used; checked against a loop in
    # test_uncertainty.py)
    knn = knn_accuracy(torch.from_numpy(arrays["train"]["features"]), torch.from_numpy(arrays["train"]["labels"]),
                       torch.from_numpy(arrays["test"]["features"]), torch.from_numpy(arrays["test"]["labels"]),
                       k=trained.config.knn_k, num_classes=3)
    assert knn == pytest.approx(trained.metrics["knn_accuracy"], abs=1e-12)
    # the same images as files: the same features
    files = tmp_path / "files.npz"
    extract_py.main(extract_py.parser().parse_args([str(trained.path), "--images", str(trained.data.root / "test"),
                                                    "--out", str(files), "--device", "cpu", "--quiet"]))
    loaded = np.load(files, allow_pickle=False)
    assert [f"test/{n}" for n in loaded["names"]] == names.tolist()
    assert np.allclose(loaded["features"], arrays["test"]["features"], atol=1e-6) and "labels" not in loaded
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        extract_py.main(extract_py.parser().parse_args([str(trained.path), "--split", "test", "--out", str(files)]))


def test_run_encode_and_read_images(trained):
    """Files read as the evaluation reads its own images; one image encoded alone as within a batch (eval mode)."""
    paths = [p for p, _ in trained.data.test_samples[:4]]
    x = trained.read_images(paths)
    assert torch.equal(x, next(trained.data.eval_batches("test", 4, "cpu"))[0])
    out = trained.encode(x)
    assert out["features"].shape == (4, 16) and set(out) >= {"h", "z", "features", "gate", "probs"}
    alone = trained.encode(x[1])
    assert torch.allclose(alone["features"], out["features"][1:2], atol=1e-6)


def test_bad_settings_and_a_locked_folder_are_refused_before_anything_is_written(tree, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="--width must be at least 1, got 0"):
        pyro_ncl.run(Config(dataset="folder", data_root=str(tree), width=0, out=str(out)))
    with pytest.raises(ValueError, match="unknown setting\\(s\\): colour"):
        pyro_ncl.run(out=str(out), colour=True)
    with pytest.raises(ValueError, match="--channels: unknown channels 2; expected one of: 1, 3"):
        pyro_ncl.run(dataset="folder", data_root=str(tree), channels=2, out=str(out))
    assert not out.exists()
    locked = tmp_path / "locked"
    with RunLock(locked):
        with pytest.raises(ValueError, match="is in use by another run"):
            pyro_ncl.run(Config(dataset="folder", data_root=str(tree), out=str(locked), **TINY))
    assert not (locked / "config.json").exists()


def test_resume_from_python_uses_the_recorded_statistics(trained, tmp_path, monkeypatch):
    """Resuming the finished run: its own settings (channels and statistics from config.json, never recomputed),
    no step left to train, and the same metrics from the same network."""
    import shutil

    import pyro_ncl.data.folder as folder_dataset
    folder = tmp_path / "copy"
    shutil.copytree(trained.path, folder)
    monkeypatch.setattr(folder_dataset, "image_statistics", lambda *a: pytest.fail("statistics recomputed"))
    again = pyro_ncl.run(resume=str(folder), quiet=True)
    assert again.config.image_mean == trained.config.image_mean and again.metrics["steps"] == trained.metrics["steps"]
    for key in ("knn_accuracy", "linear_probe_features", "semantic_consistency", "sparsity"):
        assert again.metrics[key] == trained.metrics[key], key


def test_the_readme_commands_unlabelled_and_labelled(tree, tmp_path):
    """The README's second command (pre-training on an unlabelled folder, evaluating on the labelled tree) and its
    extraction command, as a user types them."""
    rng = np.random.default_rng(3)
    pool = tmp_path / "unlabelled"
    for i in range(16):
        write_image(pool / f"batch{i % 2}" / f"u{i}.jpg", rng, i, (30, 26))
    out = tmp_path / "run"
    train = subprocess.run([sys.executable, "experiments/run_svi.py", "--dataset", "folder", "--data-root", str(tree),
                            "--unlabelled-root", str(pool), *TINY_FLAGS, "--out", str(out)],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert train.returncode == 0, train.stderr[-2000:]
    assert "folder (16 train images)" in train.stdout
    saved = json.loads((out / "config.json").read_text())
    assert saved["unlabelled_root"] == str(pool) and saved["channels"] == 3
    exported = subprocess.run([sys.executable, "experiments/extract.py", str(out), "--split", "test", "--out",
                               str(tmp_path / "test.npz")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert exported.returncode == 0 and "wrote" in exported.stdout, exported.stderr[-2000:]
    assert np.load(tmp_path / "test.npz")["features"].shape == (9, 16)


def test_a_bad_folder_through_the_command_line_is_one_line(tree, tmp_path, capsys):
    import shutil
    root = tmp_path / "bad"
    shutil.copytree(tree, root)
    (root / "train" / "empty").mkdir()
    run_svi = script("run_svi")
    code = run_svi.cli(["--dataset", "folder", "--data-root", str(root), *TINY_FLAGS, "--out", str(tmp_path / "o")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines == [f"error: folder: class folder {root / 'train' / 'empty'} holds no images (or pass "
                                   f"--skip-bad-images to leave it out)"]
    assert not (tmp_path / "o").exists()
    extract_py = script("extract")
    with pytest.raises(ValueError, match="holds no image files"):
        extract_py.main(Namespace(run_dir=str(tmp_path), images=str(root / "train" / "empty"), split=None,
                                  out=str(tmp_path / "x.npz"), overwrite=False, device="cpu", batch_size=None,
                                  data_root=None, skip_bad_images=False, quiet=True))


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").exists(), reason="Fashion-MNIST not installed")
def test_files_through_an_in_memory_run_match_its_split_features(tiny_run, tmp_path):
    """A Fashion-MNIST run (images held in memory): its test images written as PNG files and read back by
    ``extract.py --images`` give the features of ``--split test``."""
    from PIL import Image

    from pyro_ncl.features import file_features
    run = load_run(tiny_run("bayesncl"))
    for i in range(6):
        Image.fromarray(run.data.test.images[i, 0].numpy()).save(tmp_path / f"{i}.png")
    files = file_features(run, sorted(tmp_path.glob("*.png")), root=tmp_path)
    split = features_by_hand(run, "test", 6, batches=1)
    assert files["names"].tolist() == [f"{i}.png" for i in range(6)]
    for key in ("h", "z", "features", "gate", "probs"):
        assert np.allclose(files[key], split[key][:6], atol=1e-5), key
