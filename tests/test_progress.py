"""Progress off a terminal: lines with the ETA, at the right times, from rank 0 only, nothing with --quiet, and no
extra reads of the step's statistics (each is a host-device synchronisation on a GPU)."""
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_ncl import progress as progress_module
from pyro_ncl.config import Config
from pyro_ncl.cli import build_parser, config_from_args
from pyro_ncl.data.augment import BatchAugment
from pyro_ncl.data.base import ImageTensors, InMemoryData
from pyro_ncl.progress import INTERVAL_ENV, LineProgress, RunClock, format_duration, make_progress
from pyro_ncl.system import ContrastiveSystem, build_system
from pyro_ncl.train import seed_everything, train

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
LINE = re.compile(r"^epoch (\d+)/(\d+) · step (\d+)/(\d+) \| loss [\d.]+ contrastive [\d.]+ gate_kl [\d.]+ "
                  r"(?:gate_entropy [\d.]+ budget \d+ )?open_gates [\d.]+ \| (\d+) img/s \| "
                  r"elapsed (\d+):(\d\d):(\d\d) · ETA (\d+):(\d\d):(\d\d)")


def test_format_duration():
    assert format_duration(0) == "0:00:00"
    assert format_duration(59.6) == "0:01:00"
    assert format_duration(3 * 3600 + 25 * 60 + 7) == "3:25:07"


def test_eta_is_the_time_per_step_after_the_warm_up_times_the_steps_left():
    """A slow first step (10 s), then 2 s per step: the rate leaves the warm-up out."""
    clock = RunClock(total_steps=100, start_step=0, elapsed=0.0, now=0.0)
    times = {1: 10.0}
    for step in range(2, 21):
        times[step] = 10.0 + 2.0 * (step - 1)
    for step, now in times.items():
        clock.tick(step, now)
    assert clock.eta(20, times[20]) == pytest.approx(2.0 * 80)
    assert clock.elapsed(times[20]) == pytest.approx(48.0)
    # during the warm-up: the plain average since the start
    early = RunClock(total_steps=100, now=0.0)
    early.tick(1, 10.0)
    assert early.eta(1, 10.0) == pytest.approx(10.0 * 99)


def test_resumed_clock_counts_the_earlier_sessions():
    clock = RunClock(total_steps=50, start_step=30, elapsed=120.0, now=1000.0)
    for step in range(31, 41):
        clock.tick(step, 1000.0 + 3.0 * (step - 30))
    assert clock.elapsed(1030.0) == pytest.approx(150.0)
    assert clock.eta(40, 1030.0) == pytest.approx(3.0 * 10)


def _values(step):
    return dict(loss=5.0 - step / 100, contrastive=4.9, gate_kl=0.07, open_gates=0.8)


def test_lines_come_a_few_steps_in_then_every_interval_and_at_the_epoch_end():
    stream = io.StringIO()
    clock = RunClock(total_steps=48, now=0.0)
    lines = LineProgress(clock, epochs=2, batch_size=32, stream=stream, interval=30.0)
    printed = []
    for step in range(1, 25):
        now = 4.0 * step  # 4 s per step
        clock.tick(step, now)
        if lines.wants_line(step, now):
            lines.step_line(step, 0, _values(step), now)
            printed.append(step)
    lines.epoch_end(24, 0, _values(24), 96.0)
    first = progress_module.WARMUP_STEPS + progress_module.FIRST_LINE_STEPS
    # the first line a few steps in, then one each 30 s (every 8 steps of 4 s), then the epoch's end
    assert printed == [first, first + 8, first + 16]
    out = stream.getvalue().splitlines()
    assert len(out) == 4 and out[-1].startswith("epoch 1/2 done · step 24/48")
    match = LINE.match(out[0])
    assert match, out[0]
    assert int(match[5]) == round(32 * first / (4.0 * first))  # images/s since the start: 8
    eta = int(match[9]) * 3600 + int(match[10]) * 60 + int(match[11])
    assert eta == 4 * (48 - first)  # 4 s per step after the warm-up, times the steps left
    assert f"expected training time {format_duration(4.0 * 48)}" in out[0]
    assert "expected training time" not in out[1]


def test_progress_kinds(monkeypatch):
    clock = RunClock(total_steps=10, now=0.0)
    assert type(make_progress(False, clock, 1, 8, io.StringIO())) is progress_module.Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert type(make_progress(True, clock, 1, 8, Terminal())) is progress_module.BarProgress
    assert type(make_progress(True, clock, 1, 8, io.StringIO())) is LineProgress
    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert make_progress(True, clock, 1, 8, io.StringIO()).interval == 2.5
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(ValueError, match=INTERVAL_ENV):
        make_progress(True, clock, 1, 8, io.StringIO())


def test_quiet_and_tensorboard_flags():
    parser = build_parser()
    assert config_from_args(parser.parse_args([])).quiet is False
    assert config_from_args(parser.parse_args(["--quiet"])).quiet is True
    assert config_from_args(parser.parse_args([])).tensorboard is None  # on when the package is installed
    assert config_from_args(parser.parse_args(["--tensorboard"])).tensorboard is True
    assert config_from_args(parser.parse_args(["--no-tensorboard"])).tensorboard is False


def _memory_data(n=96, size=12):
    g = torch.Generator().manual_seed(0)
    split = ImageTensors(torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8),
                         torch.randint(0, 4, (n,), generator=g))
    return InMemoryData("random", split, split, num_classes=4, mean=[0.5], std=[0.25], augment=BatchAugment(size))


def _train(tmp_path, capsys, monkeypatch, **settings):
    config = Config(width=4, hidden_dim=16, feature_dim=8, batch_size=8, epochs=1, checkpoint_every=0,
                    tensorboard=False, **settings).resolved()
    seed_everything(0)
    system = build_system(config, in_channels=1, num_classes=4)
    reads = []
    original = ContrastiveSystem.step_stats
    monkeypatch.setattr(ContrastiveSystem, "step_stats", lambda self: reads.append(1) or original(self))
    capsys.readouterr()
    train(system, _memory_data(), config, tmp_path, torch.device("cpu"))
    return capsys.readouterr().err, len(reads)


def test_statistics_are_read_only_for_rows_and_lines(tmp_path, capsys, monkeypatch):
    """12 steps, a row at steps 1, 5 and 10: 3 reads with --quiet; the lines add theirs (one per line)."""
    err, reads = _train(tmp_path, capsys, monkeypatch, log_every=5, quiet=True)
    assert err == "" and reads == 3
    monkeypatch.setenv(INTERVAL_ENV, "1e9")  # only the first line (step 7) and the epoch's end
    err, reads = _train(tmp_path, capsys, monkeypatch, log_every=5)
    lines = err.strip().splitlines()
    assert [int(LINE.match(line)[3]) for line in lines[:1]] == [7] and lines[1].startswith("epoch 1/1 done")
    assert len(lines) == 2 and reads == 3 + 2


def test_only_rank_zero_prints(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    monkeypatch.setattr("pyro_ncl.distributed.is_main", lambda: False)
    err, _ = _train(tmp_path, capsys, monkeypatch, log_every=5)
    assert err == ""


@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")
def test_piped_run_prints_progress_lines_with_an_eta(tmp_path):
    """A tiny run with its output piped (not a terminal), as under nohup or CI."""
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "run_svi.py"), "--subset", "160",
                             "--epochs", "2", "--batch-size", "16", "--width", "4", "--hidden-dim", "32",
                             "--feature-dim", "16", "--probe-epochs", "1", "--eval-subset", "100",
                             "--no-tensorboard", "--out", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT,
                            env={**os.environ, INTERVAL_ENV: "0"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    with_eta = [LINE.match(line) for line in lines if LINE.match(line)]
    assert with_eta, result.stderr[-2000:]
    assert "expected training time" in lines[0] and int(with_eta[0][3]) == 7
    assert all(int(m[4]) == 20 and int(m[2]) == 2 for m in with_eta)  # 2 epochs of 160 / 16 steps
    assert [line.split(" · ")[0] for line in lines if " done " in line] == ["epoch 1/2 done", "epoch 2/2 done"]
    assert "evaluating" in result.stderr

