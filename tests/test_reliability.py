"""Nothing lost, clear errors, safe loading: kill-and-resume, malicious and truncated checkpoints, bad inputs."""
import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyro_ncl.checkpoint import CheckpointError, load_checkpoint, load_latest, save_atomic, save_checkpoint
from pyro_ncl.config import Config
from pyro_ncl.system import build_system
from pyro_ncl.train import SVITrainer

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "run_svi.py"
FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")
TINY = ["--subset", "1024", "--epochs", "2", "--batch-size", "32", "--width", "4", "--hidden-dim", "32",
        "--feature-dim", "16", "--probe-epochs", "2", "--eval-subset", "1000", "--log-every", "1",
        "--checkpoint-every", "5"]
TIMING = ("train_seconds", "eval_seconds")


def load_run_svi():
    spec = importlib.util.spec_from_file_location("run_svi", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_cli():
    return load_run_svi().cli


def log_rows(run_dir):
    with open(run_dir / "log.csv") as f:
        return [(r["step"], r["loss"]) for r in csv.DictReader(f)]


def metrics_without_timing(run_dir):
    return {k: v for k, v in json.loads((run_dir / "metrics.json").read_text()).items() if k not in TIMING}


@needs_data
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_result(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert subprocess.run([sys.executable, str(SCRIPT), *TINY, "--out", str(straight)], cwd=ROOT,
                          capture_output=True).returncode == 0
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *TINY, "--out", str(killed)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a mid-epoch checkpoint exists and training has gone past it
        if (killed / "log.csv").exists() and any(int(s) >= 12 for s, _ in log_rows(killed)[1:]):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()
    state = load_checkpoint(killed / "checkpoint.pt")
    assert 0 < state["step_in_epoch"] < 32, "the test should resume from the middle of an epoch"
    resumed = subprocess.run([sys.executable, str(SCRIPT), "--resume", str(killed)], cwd=ROOT, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    assert metrics_without_timing(killed) == metrics_without_timing(straight)
    assert log_rows(killed) == log_rows(straight)


class Payload:
    """Unpickling it runs ``touch sentinel``."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_checkpoint_that_runs_code_is_refused_without_running_it(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"system": Payload(sentinel)}, path)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    assert not sentinel.exists()


@needs_data
def test_resume_refuses_malicious_and_falls_back_from_truncated(tmp_path, capsys):
    cli = load_cli()
    run = tmp_path / "run"
    assert cli([*TINY, "--epochs", "1", "--out", str(run)]) == 0
    good = (run / "checkpoint.pt").read_bytes()
    # truncated latest checkpoint, good previous one: resume goes on from the previous, nothing deleted
    (run / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    (run / "checkpoint.prev.pt").write_bytes(good)
    capsys.readouterr()
    assert cli(["--resume", str(run)]) == 0
    assert "resuming from" in capsys.readouterr().err
    # a malicious checkpoint and no previous one: refused, payload not run
    sentinel = tmp_path / "pwned"
    torch.save({"system": Payload(sentinel)}, run / "checkpoint.pt")
    (run / "checkpoint.prev.pt").unlink()
    assert cli(["--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing checkpoint" in err[0] and not sentinel.exists()
    assert (run / "checkpoint.pt").exists()


def test_overwrite_removes_the_old_runs_results(tmp_path):
    """Without the removal the new run's first save would move the old run's checkpoint.pt to checkpoint.prev.pt,
    where resuming after a bad latest checkpoint would pick it up."""
    run_svi = load_run_svi()
    out = tmp_path / "run"
    out.mkdir()
    for name in run_svi.RESULT_FILES:
        save_atomic({"run": "old"}, out / name)
    with pytest.raises(ValueError, match="--overwrite"):
        run_svi.prepare_out_dir(Config(out=str(out)))
    assert all((out / name).exists() for name in run_svi.RESULT_FILES)
    run_svi.prepare_out_dir(Config(out=str(out), overwrite=True))
    assert not any((out / name).exists() for name in run_svi.RESULT_FILES)
    save_checkpoint({"run": "new"}, out / "checkpoint.pt")  # the new run's first checkpoint, then a corrupt one
    (out / "checkpoint.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError):  # not the old run's checkpoint.pt as a fallback
        load_latest(out)


def test_all_closed_gates_give_a_finite_step():
    config = Config(width=4, hidden_dim=16, feature_dim=8, guide="relaxed_st").resolved()  # a gate with a head
    system = build_system(config, in_channels=1)
    torch.nn.init.constant_(system.guide.head[-1].bias, -50.0)  # every gate closed
    trainer = SVITrainer(system, config, steps_per_epoch=1)
    loss = trainer.step(torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28), None, torch.arange(4), num_images=8)
    assert system.step_stats()["open_gates"] == 0.0
    assert torch.isfinite(torch.tensor(loss))
    assert all(torch.isfinite(p).all() for p in system.parameters())


@needs_data
def test_nonfinite_objective_stops_with_step_and_term(tmp_path, capsys):
    cli = load_cli()
    code = cli([*TINY, "--lr", "1e12", "--checkpoint-every", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "at step" in err[0] and "non-finite:" in err[0] and "checkpoint" in err[0]
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] >= 1  # the last good one is kept


BAD_INPUTS = [
    (["--data-root", "/nonexistent/folder"], "/nonexistent/folder"),
    (["--dataset", "nosuch"], "unknown dataset 'nosuch'"),
    (["--method", "nosuch"], "unknown method 'nosuch'"),
    (["--prior", "nosuch"], "unknown prior 'nosuch'"),
    (["--guide", "nosuch"], "unknown guide 'nosuch'"),
    (["--likelihood", "nosuch"], "unknown likelihood 'nosuch'"),
    (["--prior-prob", "1.5"], "--prior-prob must lie in (0, 1), got 1.5"),
    (["--prior-prob", "0"], "--prior-prob must lie in (0, 1), got 0"),
    (["--temperature", "0"], "--temperature must be > 0, got 0"),
    (["--gate-temperature", "-1"], "--gate-temperature must be > 0, got -1"),
    (["--batch-size", "1"], "--batch-size must be at least 2"),
    (["--subset", "70000"], "--subset 70000 is larger than the 60000 training images"),
    (["--feature-dim", "0"], "--feature-dim must be at least 1, got 0"),
    (["--out", "/proc/forbidden"], "is not writable"),
    (["--preset", "nosuch"], "preset 'nosuch' not found"),
    (["--download"], "unknown option(s) for dataset fashion-mnist: download"),
]


@needs_data
@pytest.mark.parametrize("argv,expected", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_with_status_2(argv, expected, tmp_path, capsys):
    argv = argv if "--out" in argv else [*argv, "--out", str(tmp_path / "out")]
    assert load_cli()(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "out" / "config.json").exists()


def test_empty_data_root_and_unparsable_preset_are_one_line_errors(tmp_path, capsys):
    cli = load_cli()
    (tmp_path / "empty").mkdir()
    assert cli(["--data-root", str(tmp_path / "empty"), "--out", str(tmp_path / "o1")]) == 2
    assert str(tmp_path / "empty") in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    assert cli(["--preset", str(bad), "--out", str(tmp_path / "o2")]) == 2
    assert "does not parse" in capsys.readouterr().err


@needs_data
def test_checkpoint_from_another_method_is_refused(tmp_path, capsys):
    cli = load_cli()
    run = tmp_path / "run"
    assert cli([*TINY, "--epochs", "1", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    config.update(method="ncl", prior="none", guide="none")
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert cli(["--resume", str(run)]) == 2
    assert "made with method='bayesncl'" in capsys.readouterr().err
