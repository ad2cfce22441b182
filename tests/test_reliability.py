"""Nothing lost, clear errors, safe loading: kill-and-resume, malicious and truncated checkpoints, bad inputs."""
import csv
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyro_ncl import experiment
import torch

from pyro_ncl.checkpoint import CheckpointError, load_checkpoint, load_latest, save_atomic, save_checkpoint
from pyro_ncl.config import Config
from pyro_ncl.system import build_system
from pyro_ncl.train import SVITrainer

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "run_svi.py"
FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")
# 32 steps of 8 images an epoch (the kill below lands mid-epoch), evaluated on 200 images: equality is what is
# compared, not the metrics' values
TINY = ["--subset", "256", "--epochs", "2", "--batch-size", "8", "--width", "4", "--hidden-dim", "32",
        "--feature-dim", "16", "--probe-epochs", "2", "--eval-subset", "200", "--log-every", "1",
        "--checkpoint-every", "5"]
TIMING = ("train_seconds", "eval_seconds")


def load_run_svi():
    module = importlib.import_module("pyro_ncl.commands.run_svi")
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
    """With the score-function gate and its decaying-average baseline (Pyro's param store, outside the modules, is
    in the checkpoint too): the resumed run logs the straight run's losses and ends with its metrics."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    flags = [*TINY, "--guide", "bernoulli", "--baseline", "decaying"]
    assert subprocess.run([sys.executable, str(SCRIPT), *flags, "--out", str(straight)], cwd=ROOT,
                          capture_output=True).returncode == 0
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *flags, "--out", str(killed)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900  # generous: on a loaded machine the start alone can take minutes
    while time.time() < deadline:  # kill once a mid-epoch checkpoint exists and training has gone past it
        if (killed / "log.csv").exists() and any(int(s) >= 12 for s, _ in log_rows(killed)[1:]):
            break
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()
    state = load_checkpoint(killed / "checkpoint.pt")
    assert 0 < state["step_in_epoch"] < 32, "the test should resume from the middle of an epoch"
    assert "__baseline_avg_downstream_cost_gate" in state["pyro_params"]
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


def test_overwrite_removes_every_output_of_the_old_run(tmp_path):
    """Without the removal the new run's first save would move the old run's checkpoint.pt to checkpoint.prev.pt,
    where resuming after a bad latest checkpoint would pick it up, and compare.py would read the old eval/ as the
    new run's. Files that are not a run's outputs stay."""
    out = tmp_path / "run"
    (out / "eval").mkdir(parents=True)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        save_atomic({"run": "old"}, out / name)
    old = {"config.json": "{}", "log.csv": "step\n", "metrics.json": "{}", "loss.png": "png",
           "eval/metrics.json": '{"open_gates": 0.753}', "events.out.tfevents.1.host": "tb", "notes.txt": "mine"}
    for name, text in old.items():
        (out / name).write_text(text)
    with pytest.raises(ValueError, match="--overwrite"):
        experiment.start_run_folder(Config(out=str(out)), out)
    assert (out / "eval" / "metrics.json").exists() and (out / "checkpoint.pt").exists()
    experiment.start_run_folder(Config(out=str(out), overwrite=True), out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt"]
    assert json.loads((out / "config.json").read_text())["overwrite"] is True
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


# ---------------------------------------------------------------- checkpoint rotation (issue 12, item 4)
def _state(step, size=100):
    return {"system": {"w": torch.randn(size)}, "optimizer": {}, "scheduler": {}, "step": step, "epoch": 0,
            "step_in_epoch": step, "elapsed": 0.0, "config": {}, "rng_ranks": []}


def test_a_damaged_checkpoint_is_never_rotated_over_the_last_good_one(tmp_path):
    save_checkpoint(_state(1), tmp_path / "checkpoint.pt")
    save_checkpoint(_state(2), tmp_path / "checkpoint.pt")
    good = (tmp_path / "checkpoint.prev.pt").read_bytes()
    latest = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(latest[: len(latest) // 2])  # truncated latest
    assert load_latest(tmp_path)["step"] == 1  # falls back to the previous one
    save_checkpoint(_state(3), tmp_path / "checkpoint.pt")  # the resumed run's next save
    assert (tmp_path / "checkpoint.prev.pt").read_bytes() == good  # the damaged one replaced, not rotated
    assert load_latest(tmp_path)["step"] == 3


FULL_DISK = """
import resource, sys, torch
from pyro_ncl.checkpoint import CheckpointError, save_checkpoint
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))   # ulimit -f: no file beyond 200 kB
try:
    save_checkpoint({"system": {"w": torch.zeros(100_000)}}, sys.argv[1])   # 400 kB
except CheckpointError as err:
    print(err)
"""


def test_a_full_disk_keeps_the_last_good_checkpoint_and_names_the_folder(tmp_path):
    """The issue's sequence: truncated checkpoint.pt, resume from checkpoint.prev.pt, then the next save fails."""
    save_checkpoint(_state(1), tmp_path / "checkpoint.pt")
    save_checkpoint(_state(2), tmp_path / "checkpoint.pt")
    latest = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(latest[: len(latest) // 2])
    result = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path / "checkpoint.pt")], capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    message = result.stdout.strip().splitlines()
    assert len(message) == 1, result.stdout + result.stderr
    assert f"could not write a checkpoint in {tmp_path}: the file-size limit (ulimit -f) is reached" in message[0]
    assert f"the last good checkpoint, {tmp_path / 'checkpoint.prev.pt'}, is kept" in message[0]
    assert load_latest(tmp_path)["step"] == 1  # still resumable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]  # no temp file


def test_a_failed_save_touches_nothing(tmp_path, monkeypatch):
    save_checkpoint(_state(1), tmp_path / "checkpoint.pt")
    save_checkpoint(_state(2), tmp_path / "checkpoint.pt")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match=f"in {tmp_path}: the disk is full; the last good checkpoint, "
                                              f"{tmp_path / 'checkpoint.pt'}, is kept"):
        save_checkpoint(_state(3), tmp_path / "checkpoint.pt")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ---------------------------------------------------------------- SIGTERM (issue 12, item 11)
def _tiny_fake_run(data, *extra):
    return [*TINY_FAKE, "--data-root", str(data), *extra]


TINY_FAKE = ["--dataset", "mnist", "--subset", "256", "--epochs", "1", "--batch-size", "16", "--width", "4",
             "--hidden-dim", "32", "--feature-dim", "16", "--probe-epochs", "1", "--log-every", "1",
             "--checkpoint-every", "1000"]


def _terminate_after(proc, run_dir, steps, timeout=900):  # generous: a loaded machine starts slowly
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "log.csv").exists() and len(log_rows(run_dir)) >= steps:
            break
        assert proc.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=timeout)


def test_sigterm_writes_a_checkpoint_says_how_to_resume_and_exits_143(tmp_path, fake_mnist):
    """--quiet: the progress lines (issue 13) are not what this checks; stderr is then the SIGTERM line alone."""
    data, out = fake_mnist(tmp_path / "data", train=256, test=32), tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *_tiny_fake_run(data, "--quiet"), "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, err = _terminate_after(proc, out, steps=3)
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("SIGTERM: stopped at step") and f"--resume {out}" in lines[0]
    state = load_checkpoint(out / "checkpoint.pt")  # --checkpoint-every 1000: written because of the signal
    steps = [int(step) for step, _ in log_rows(out)]
    assert state["step"] == steps[-1] >= 3 and state["step_in_epoch"] == state["step"] < 16
    assert not (out / ".lock").exists()  # released
    resumed = subprocess.run([sys.executable, str(SCRIPT), "--resume", str(out)], cwd=ROOT, capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    assert [int(step) for step, _ in log_rows(out)] == list(range(1, 17))  # every step once, none lost
    assert (out / "metrics.json").exists()


def test_sigterm_under_torchrun_stops_every_process_after_the_same_step(tmp_path, fake_mnist):
    """torchrun forwards SIGTERM to its workers; the stop flag rides on the gradient all-reduce, so both stop
    after one step and take part in the checkpoint; only rank 0 prints."""
    data, out = fake_mnist(tmp_path / "data", train=256, test=32), tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.Popen([str(torchrun), "--standalone", "--nproc_per_node=2", str(SCRIPT),
                             *_tiny_fake_run(data, "--device", "cpu"), "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    _, err = _terminate_after(proc, out, steps=3)
    said = [line for line in err.splitlines() if "--resume" in line]
    assert len(said) == 1 and said[0].startswith("SIGTERM: stopped at step") and f"--resume {out}" in said[0], err
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["world_size"] == 2 and state["step"] == int(log_rows(out)[-1][0]) >= 3


# ---------------------------------------------------------------- one run per folder (issue 12, item 5)
HOLD_LOCK = """
import sys, time
from pyro_ncl.run_folder import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _hold_lock(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_on_a_folder_in_use_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    from pyro_ncl.run_folder import RunLock
    folder = tmp_path / "run"
    holder = _hold_lock(folder)
    try:
        with pytest.raises(ValueError, match=f"--out {folder} is in use by another run \\(pid {holder.pid} on "):
            RunLock(folder).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)  # dies without releasing: its lock file stays behind
        holder.wait()
    assert (folder / ".lock").exists()
    with RunLock(folder) as lock:  # the kernel dropped the dead holder's lock
        assert str(os.getpid()) in lock.path.read_text()
    assert not (folder / ".lock").exists()


def test_overwrite_of_a_folder_in_use_is_refused_and_loses_nothing(tmp_path, fake_mnist, tiny_run):
    """The issue's two runs on one --out: the second (with --overwrite) must not touch the first's folder."""
    cli = load_cli()
    folder = tmp_path / "run"
    shutil.copytree(tiny_run("bayesncl"), folder)
    data = fake_mnist(tmp_path / "data", train=256, test=32)
    holder = _hold_lock(folder)  # the first run, still running
    try:
        before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        code = cli([*_tiny_fake_run(data), "--out", str(folder), "--overwrite"])
        after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and after == before
