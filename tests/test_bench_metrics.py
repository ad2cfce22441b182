"""experiments/bench_metrics.py on tiny features: the suite and the per-dimension loop reference agree."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("experiments_bench_metrics", ROOT / "experiments" / "bench_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("ref_dims", [0, 24])
def test_suite_agrees_with_loop_reference(bench, ref_dims, capsys):
    # 1,300 rows: several CPU blocks of 512 rows and two Gram chunks of 1,024
    args = bench.parse_args(["--num-samples", "1300", "--num-dims", "64", "--num-classes", "5", "--chunk", "1024",
                             "--ref-dims", str(ref_dims), "--repeats", "1", "--device", "cpu"])
    out = bench.main(args)
    assert out["max_difference"] < 1e-6  # every metric, active-dims count included, against the loops and the SVD
    assert 0 < out["vectorised"]["sparsity"] < 1 and out["vectorised"]["active_dims"] < 64  # features with dead dims
    assert "speed-up of the suite" in capsys.readouterr().out
