"""experiments/device_check.sh: its CPU form passes (every step, with the summary table), and a failing step is
reported while the next ones still run, with a non-zero exit status."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "device_check.sh"
STEPS = 8


def _summary_rows(stdout: str):
    summary = stdout.split("device_check summary:")[1]
    return summary, [line for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| step")]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU it runs the GPU form: run it on its own")
def test_the_cpu_form_passes_every_step(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path))
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=3600, cwd=tmp_path,
                            env=env)  # ~50 s of CPU time; the limit is for a crowded machine
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary, rows = _summary_rows(result.stdout)
    assert "CPU: no GPU visible, so the tiny CPU form" in summary
    assert len(rows) == STEPS and all(row.split("|")[2].strip() == "PASS" for row in rows), summary
    assert "data at most 0, step at most 1" in summary  # synchronisations per step
    assert "passed" in rows[1] and "SVI/plain" in rows[3] and "bf16+channels-last" in rows[4]
    assert "2 process(es), backend gloo" in rows[6]
    assert "largest loss difference to the straight run 0;" in rows[7]  # the resumed run is the straight one
    assert not list(tmp_path.glob("device_check.*"))  # the work folder is removed after a pass


def test_a_failing_step_is_reported_and_the_others_still_run(tmp_path):
    env = dict(os.environ, PYTHON="false", TMPDIR=str(tmp_path))  # every Python step fails at once
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 1
    summary, rows = _summary_rows(result.stdout)
    assert len(rows) == STEPS and all("FAIL (exit" in row for row in rows), summary
    assert "FAILED: see the logs in" in summary
    assert len(list(tmp_path.glob("device_check.*/logs/*.log"))) == STEPS  # the work folder is kept: logs
