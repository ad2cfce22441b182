"""TensorBoard: the event files of a run read back (scalars = log.csv, gate figures, hparams = config + metrics),
training unchanged by it, the gate monitor against a direct computation, compare's log folder, a missing package."""
import argparse
import csv
import importlib
import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from pyro_ncl import experiment
import torch
from PIL import Image

from pyro_ncl import tensorboard
from pyro_ncl.checkpoint import load_checkpoint
from pyro_ncl.config import BOOKKEEPING, Config
from pyro_ncl.data.augment import BatchAugment
from pyro_ncl.data.base import ImageTensors, InMemoryData
from pyro_ncl.data.file_data import FolderData
from pyro_ncl.monitor import GateMonitor, monitor_images
from pyro_ncl.system import build_system
from pyro_ncl.train import seed_everything, train
from conftest import TINY_RUN_FLAGS  # tests/ is on sys.path (pytest's default prepend import mode)

EventAccumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator").EventAccumulator
plugin_data_pb2 = pytest.importorskip("tensorboard.plugins.hparams.plugin_data_pb2")

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")


def events(logdir) -> EventAccumulator:
    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0, "images": 0,
                                                               "tensors": 0})
    accumulator.Reload()
    return accumulator


def read_log(run_dir):
    with open(run_dir / "log.csv") as f:
        return list(csv.DictReader(f))


def script(name: str):
    module = importlib.import_module(f"pyro_ncl.commands.{name}")
    return module


@needs_data
def test_run_writes_the_logged_scalars_gate_figures_and_hparams(tiny_run):
    """A run with the default settings (TensorBoard on): every log.csv row is in the event file, the gate figures
    at each epoch's end, the final metrics and the settings as hparams."""
    run_dir = tiny_run("bayesncl")
    acc = events(run_dir)
    rows = read_log(run_dir)
    for column in ("loss", "contrastive", "gate_kl", "open_gates", "lr", "images_per_s"):
        logged = acc.Scalars(f"train/{column}")
        assert [e.step for e in logged] == [int(r["step"]) for r in rows], column
        np.testing.assert_allclose([e.value for e in logged], [float(r[column]) for r in rows], rtol=1e-6)
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    last_step = metrics["steps"]
    assert last_step == config["subset"] // config["batch_size"]
    assert [h.step for h in acc.Histograms("gates/probability")] == [last_step]  # one epoch
    histogram = acc.Histograms("gates/probability")[0].histogram_value
    assert 0 <= histogram.min <= histogram.max <= 1 and histogram.num == 256 * config["feature_dim"]
    assert [i.step for i in acc.Images("gates/class_open_frequency")] == [last_step]
    for name in ("linear_probe_features", "knn_accuracy", "open_gates", "train_seconds"):
        (scalar,) = acc.Scalars(f"metrics/{name}")
        assert scalar.step == last_step and scalar.value == pytest.approx(metrics[name], rel=1e-6)
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["prior_prob"].number_value == pytest.approx(config["prior_prob"])
    assert hparams["guide"].string_value == config["guide"] == "exact_k"
    assert hparams["subset"].number_value == config["subset"]
    assert not set(hparams) & set(BOOKKEEPING)  # where and how it ran is no hyperparameter


def _memory_data(n=64, size=12, classes=4):
    g = torch.Generator().manual_seed(0)
    split = ImageTensors(torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8),
                         torch.arange(n) % classes)
    return InMemoryData("random", split, split, num_classes=classes, mean=[0.5], std=[0.25],
                        augment=BatchAugment(size))


def _train(out, resume=None, **settings):
    config = Config(width=4, hidden_dim=16, feature_dim=8, batch_size=8, epochs=2, checkpoint_every=0,
                    log_every=1, quiet=True, **settings).resolved()
    out.mkdir(exist_ok=resume is not None)
    seed_everything(0)
    system = build_system(config, in_channels=1, num_classes=4)
    train(system, _memory_data(n=32), config, out, torch.device("cpu"), resume=resume)
    return system


def test_tensorboard_changes_nothing_in_training(tmp_path):
    """Same losses, same weights and BatchNorm statistics with and without the event files and the gate monitor
    (eval mode, no random draw)."""
    plain = _train(tmp_path / "plain", tensorboard=False)
    logged = _train(tmp_path / "logged", tensorboard=True)
    assert not list((tmp_path / "plain").glob(tensorboard.EVENT_FILES))
    assert [r["loss"] for r in read_log(tmp_path / "plain")] == [r["loss"] for r in read_log(tmp_path / "logged")]
    for (name, a), b in zip(plain.state_dict().items(), logged.state_dict().values()):
        assert torch.equal(a, b), name
    acc = events(tmp_path / "logged")
    rows = read_log(tmp_path / "logged")
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] \
        == [(int(r["step"]), pytest.approx(float(r["loss"]), rel=1e-6)) for r in rows] and len(rows) == 8
    assert [h.step for h in acc.Histograms("gates/probability")] == [4, 8]  # each epoch's end


def test_resumed_run_replaces_the_steps_it_writes_again(tmp_path):
    """Resumed from the end of epoch 1 (as after a kill in epoch 2): TensorBoard shows each step once, with the
    values of log.csv."""
    run = tmp_path / "run"
    _train(run, tensorboard=True)
    (run / "checkpoint.pt").unlink()
    _train(run, resume=load_checkpoint(run / "checkpoint.prev.pt"), tensorboard=True)
    rows = read_log(run)
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert [(e.step, e.value) for e in events(run).Scalars("train/loss")] \
        == [(int(r["step"]), pytest.approx(float(r["loss"]), rel=1e-6)) for r in rows]


def test_gate_monitor_matches_a_direct_computation():
    data = _memory_data(n=40)
    config = Config(width=4, hidden_dim=16, feature_dim=8, guide="relaxed_st").resolved()  # a gate head
    system = build_system(config, in_channels=1, num_classes=4)
    system.train()
    buffers = {k: v.clone() for k, v in system.state_dict().items()}
    rng = torch.get_rng_state()
    monitor = GateMonitor(data, "cpu", batch_size=16, num_images=30)
    snapshot = monitor.snapshot(system)
    assert system.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, system.state_dict()[k]) for k, v in buffers.items())  # BatchNorm untouched
    # direct: the first 30 training images, normalised, one at a time in eval mode
    system.eval()
    x = (data.train.images[:30].float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        logits = torch.cat([system.guide.logits(system.encoder(x[i:i + 1])[0]) for i in range(30)])
    torch.testing.assert_close(snapshot["probs"], torch.sigmoid(logits), rtol=1e-5, atol=1e-6)
    y = data.train.labels[:30]
    for c in range(4):
        opened = [(logits[i] > 0).float() for i in range(30) if y[i] == c]
        torch.testing.assert_close(snapshot["class_frequency"][c], sum(opened) / len(opened))


def test_monitor_images_of_a_file_dataset_span_its_classes(tmp_path):
    """File datasets list their images class by class: the monitor takes a fixed spread, not the first ones."""
    samples = []
    for label in range(4):
        for i in range(10):
            path = tmp_path / f"c{label}" / f"{i}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(np.full((6, 6, 3), 10 * label + i, dtype=np.uint8)).save(path)
            samples.append((str(path), label))

    def to_tensor(image):
        return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255

    data = FolderData("files", samples, samples, 4, to_tensor, to_tensor, image_size=6)
    x, y = monitor_images(data, 12, batch_size=8)
    assert len(y) == 12 and len(set(y.tolist())) >= 3
    # each chosen image is the split's own eval image with its label
    everything = torch.cat([xb for xb, _ in data.eval_batches("train", 40, "cpu")])
    for image, label in zip(x, y):
        position = int(round(float(image[0, 0, 0]) * 255))  # 10 * label + i
        assert position // 10 == label
        torch.testing.assert_close(image, everything[label * 10 + position % 10])


def test_missing_package_is_one_line_only_when_asked_for(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as without the package
    with pytest.raises(ValueError, match="pip install tensorboard"):
        tensorboard.enabled(True)
    assert tensorboard.enabled(False) is False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tensorboard.enabled(None) is False
    assert any("pip install tensorboard" in str(w.message) for w in caught)
    if FASHION.exists():
        cli = script("run_svi").cli
        code = cli(["--subset", "64", "--batch-size", "32", "--width", "4", "--hidden-dim", "16", "--feature-dim",
                    "8", "--tensorboard", "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "--tensorboard" in err[0] and "pip install tensorboard" in err[0]


@needs_data
def test_compare_writes_a_tensorboard_logdir_of_its_runs(tiny_run, tmp_path, capsys):
    runs = [tiny_run("bayesncl"), tiny_run("ncl")]
    compare = script("compare")
    compare.main(compare.parser().parse_args([*map(str, runs), "--out", str(tmp_path / "cmp")]))
    logdir = tmp_path / "cmp" / "tensorboard"
    assert f"tensorboard --logdir {logdir}" in capsys.readouterr().out
    assert sorted(p.parent.relative_to(logdir).as_posix() for p in logdir.rglob(tensorboard.EVENT_FILES)) \
        == sorted(["bayesncl/seed0"] * len(list(runs[0].glob(tensorboard.EVENT_FILES)))
                  + ["ncl/seed0"] * len(list(runs[1].glob(tensorboard.EVENT_FILES))))
    for name, run in (("bayesncl/seed0", runs[0]), ("ncl/seed0", runs[1])):
        linked = events(logdir / name).Scalars("train/loss")
        assert [e.value for e in linked] == [e.value for e in events(run).Scalars("train/loss")]
    # again: the links are replaced, not added to
    compare.main(compare.parser().parse_args([*map(str, runs), "--out", str(tmp_path / "cmp")]))
    assert len(list(logdir.rglob(tensorboard.EVENT_FILES))) == sum(len(list(r.glob(tensorboard.EVENT_FILES)))
                                                                    for r in runs)


def test_overwrite_removes_the_old_runs_event_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "events.out.tfevents.123.host.1.0").write_bytes(b"old")
    with pytest.raises(ValueError, match="events.out.tfevents"):
        experiment.refuse_earlier_run(Config(out=str(out)))
    experiment.start_run_folder(Config(out=str(out), overwrite=True), out)
    assert not list(out.glob(tensorboard.EVENT_FILES))


def test_run_dir_names():
    assert tensorboard.run_dir_name("bayesncl prior_prob=0.2") == "bayesncl_prior_prob=0.2"
    assert tensorboard.run_dir_name("a/b c") == "a_b_c"


@needs_data
def test_sweep_points_and_references_form_one_tensorboard_logdir(tiny_run, tmp_path, capsys):
    """A sweep whose point is already done (copied): its folder is a TensorBoard run of --out, the reference is
    linked under references/."""
    out = tmp_path / "sweep"
    point = f"prior_prob={Config().prior_prob}"  # the copied run's (the default's) π
    shutil.copytree(tiny_run("bayesncl"), out / point)
    reference = tiny_run("ncl")
    sweep = script("sweep")
    sweep.run_sweep(argparse.Namespace(out=str(out), grid=[point], reference=[str(reference)],
                                  run_args=[*TINY_RUN_FLAGS, "--method", "bayesncl"]))  # the copied run's settings
    printed = capsys.readouterr().out
    assert f"{point}: ok done before" in printed  # reused, not trained again
    assert f"tensorboard --logdir {out}" in printed
    linked = events(out / "references" / "ncl").Scalars("train/loss")
    assert [e.value for e in linked] == [e.value for e in events(reference).Scalars("train/loss")]
    assert events(out / point).Scalars("train/loss")
