"""experiments/device_check.sh: its CPU form passes (every step it runs, with the summary table), a step can be left
out by name, and a failing step is reported while the next ones still run, with a non-zero exit status."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "device_check.sh"
STEPS = 9
# Steps of the CPU form that other tests already run on the CPU, left out here (DEVICE_CHECK_SKIP), and where:
ELSEWHERE = {
    "syncs": "count_syncs.py on the CPU, every path: "
             "test_gpu_readiness.py::test_every_path_waits_for_the_device_once_per_step",
    "bench_fp32": "bench_step.py: test_gpu_readiness.py (in process); the bench summary parsing: bench_fast, below",
    "torchrun": "torchrun, two gloo processes: "
                "test_distributed.py::test_torchrun_two_processes_write_one_set_of_outputs",
    "resume": "--guide bernoulli --baseline decaying resumed exactly: test_reliability.py::test_sigkill_mid_epoch_then_"
              "resume_gives_the_uninterrupted_result; its baseline restored: test_cuda.py (the tests step here) and "
              "test_gpu_readiness.py",
}


def _summary_rows(stdout: str):
    summary = stdout.split("device_check summary:")[1]
    return summary, [line for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| step")]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU it runs the GPU form: run it on its own")
def test_the_cpu_form_passes_every_step(tmp_path):
    """The steps no other test runs (synthetic data, the CUDA tests on the CPU, bench_step with bf16 and
    channels-last, bench_gate --quick, 1 epoch on a synthetic ImageNet-100 folder with --gpu-augment) pass and
    report their results; the others are listed as left out."""
    env = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path), DEVICE_CHECK_SKIP=" ".join(ELSEWHERE))
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=3600, cwd=tmp_path,
                            env=env)  # the limit is for a crowded machine
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary, rows = _summary_rows(result.stdout)
    assert "CPU: no GPU visible, so the tiny CPU form" in summary
    status = [row.split("|")[2].strip() for row in rows]
    assert len(rows) == STEPS and status == ["PASS", "PASS", "SKIP", "SKIP", "PASS", "PASS", "PASS", "SKIP", "SKIP"], \
        summary
    assert "passed" in rows[1]                                            # the CUDA tests, on the CPU
    assert "SVI/plain" in rows[4] and "bf16+channels-last" in rows[4]     # bench_step, parsed
    assert "aten ops per step" in rows[5]                                  # bench_gate --quick
    assert "kNN accuracy" in rows[6]                                       # the synthetic ImageNet-100 epoch
    assert all("left out (DEVICE_CHECK_SKIP)" in rows[i] for i in (2, 3, 7, 8))
    assert "all 5 steps run passed (4 left out by DEVICE_CHECK_SKIP)" in summary
    assert not list(tmp_path.glob("device_check.*"))  # the work folder is removed after a pass


def test_a_failing_step_is_reported_and_the_others_still_run(tmp_path):
    env = dict(os.environ, PYTHON="false", TMPDIR=str(tmp_path))  # every Python step fails at once
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 1
    summary, rows = _summary_rows(result.stdout)
    assert len(rows) == STEPS and all("FAIL (exit" in row for row in rows), summary
    assert "FAILED: see the logs in" in summary
    assert len(list(tmp_path.glob("device_check.*/logs/*.log"))) == STEPS  # the work folder is kept: logs


def test_an_unknown_step_to_leave_out_is_refused_before_anything_runs(tmp_path):
    env = dict(os.environ, PYTHON="false", TMPDIR=str(tmp_path), DEVICE_CHECK_SKIP="syncs,nosuch")
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == ["DEVICE_CHECK_SKIP: unknown step 'nosuch' (steps: data tests syncs "
                                                  "bench_fp32 bench_fast bench_gate in100 torchrun resume)"]
    assert not list(tmp_path.iterdir())
