import subprocess
import sys
from pathlib import Path

import pyro
import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_RUN_FLAGS = ("--subset", "256", "--epochs", "1", "--batch-size", "64", "--width", "4", "--hidden-dim", "32",
                  "--feature-dim", "16", "--probe-epochs", "2")


@pytest.fixture(autouse=True)
def _pyro_state():
    """Each test starts with an empty param store, Pyro validation on and a fixed seed."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``tiny_run(method)`` → the folder of a tiny trained run of ``method``, made once per test session."""
    def make(method: str) -> Path:
        out = tmp_path_factory.getbasetemp() / "tiny_runs" / method
        if not (out / "metrics.json").exists():
            result = subprocess.run([sys.executable, str(ROOT / "experiments" / "run_svi.py"), *TINY_RUN_FLAGS,
                                     "--method", method, "--out", str(out), "--overwrite"],
                                    capture_output=True, text=True, timeout=300, cwd=ROOT)
            assert result.returncode == 0, result.stderr[-2000:]
        return out
    return make
