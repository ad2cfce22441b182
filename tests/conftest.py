import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pytest

ROOT = Path(__file__).resolve().parent.parent
# the end-of-run evaluation on the first 500 test images: what the tests compare to it is computed on the same ones
TINY_RUN_FLAGS = ("--subset", "256", "--epochs", "1", "--batch-size", "64", "--width", "4", "--hidden-dim", "32",
                  "--feature-dim", "16", "--probe-epochs", "2", "--eval-subset", "500")


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
    """``tiny_run(method, *flags)`` → the folder of a tiny trained run of ``method`` (with extra run_svi
    ``flags``), made once per test session."""
    def make(method: str, *flags: str) -> Path:
        out = tmp_path_factory.getbasetemp() / "tiny_runs" / "_".join([method, *(f.strip("-") for f in flags)])
        if not (out / "metrics.json").exists():
            result = subprocess.run([sys.executable, str(ROOT / "experiments" / "run_svi.py"), *TINY_RUN_FLAGS,
                                     "--method", method, *flags, "--out", str(out), "--overwrite"],
                                    capture_output=True, text=True, timeout=300, cwd=ROOT)
            assert result.returncode == 0, result.stderr[-2000:]
        return out
    return make


def idx_bytes(array: np.ndarray) -> bytes:
    """Magic 0x00 0x00 0x08 ndim, big-endian int32 sizes, then the uint8 values."""
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_fake_mnist(root: Path, train: int = 40, test: int = 12, gz: bool = False) -> Path:
    """MNIST-format IDX files in ``root``: random pixels, labels i % 10."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", train), ("t10k", test)):
        files = {f"{prefix}-images-idx3-ubyte": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                 f"{prefix}-labels-idx1-ubyte": (np.arange(n) % 10).astype(np.uint8)}
        for name, array in files.items():
            data = idx_bytes(array)
            (root / (name + ".gz")).write_bytes(gzip.compress(data)) if gz else (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="session")
def fake_mnist():
    """``fake_mnist(root, train=40, test=12, gz=False)`` → ``root`` holding fake MNIST-format IDX files."""
    return write_fake_mnist
