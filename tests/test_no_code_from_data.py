"""No code from data (issue 19): crafted pickles whose load would create a file are refused by name, through the
loader and through the command line, and the file never appears; real numpy pickles (every protocol) still load;
a checkpoint that would run code is refused in one line, without torch's warnings."""
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_ncl.checkpoint import CheckpointError, load_checkpoint
from pyro_ncl.data import DATASETS
from pyro_ncl.safe_unpickle import RefusedPickle, load_data_pickle
from test_data_cifar_stl import pattern, write_cifar10

ROOT = Path(__file__).resolve().parent.parent


class _System:
    """Unpickling calls os.system("touch MARKER")."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Open:
    """Unpickling calls builtins.open(MARKER, "w"): creates the file without a shell."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


class _Subprocess:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return subprocess.call, (["touch", str(self.marker)],)


class _Eval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w')",)


CRAFTED = {"os.system": _System, "builtins.open": _Open, "subprocess.call": _Subprocess, "builtins.eval": _Eval}


def crafted_cifar(root: Path, payload, protocol: int) -> Path:
    """A valid fake CIFAR-10 tree whose data_batch_1 holds ``payload`` inside an otherwise plausible batch."""
    write_cifar10(root)
    entry = {b"data": payload, b"labels": [0, 1, 2, 3], b"batch_label": b"crafted"}
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(entry, protocol=protocol))
    return root


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_a_crafted_cifar_batch_is_refused_and_runs_nothing(tmp_path, name, protocol):
    marker = tmp_path / "PWNED"
    root = crafted_cifar(tmp_path / "data", CRAFTED[name](marker), protocol)
    # the check can fail: plain pickle.load of this batch does create the file
    if name == "builtins.open":
        with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
            pickle.load(f, encoding="latin1")
        assert marker.exists()
        marker.unlink()
    with pytest.raises(RefusedPickle) as err:
        DATASETS["cifar10"](root=str(root))
    message = str(err.value)
    assert message.startswith(f"refusing {root / 'cifar-10-batches-py' / 'data_batch_1'}: loading it would call ")
    # the global as pickled: e.g. posix.system, io.open, and __builtin__.eval under protocol 2
    assert f".{name.split('.')[1]}, which a CIFAR batch does not hold" in message and "\n" not in message, message
    assert not marker.exists()


def test_numpy_pickles_of_every_protocol_still_load(tmp_path):
    array = pattern(3, 32).reshape(3, -1)
    entry = {b"data": array, b"labels": [np.int64(1), 2, 3], "mean": np.float32(0.5), "names": ["a", b"b"],
             "objects": np.array([1, "x"], dtype=object)}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}"
        path.write_bytes(pickle.dumps(entry, protocol=protocol))
        back = load_data_pickle(path, "CIFAR batch")
        assert np.array_equal(back[b"data"], array) and back[b"labels"] == [1, 2, 3], protocol
        assert back["objects"].tolist() == [1, "x"] and back["names"] == ["a", b"b"]
    # a Python 2 / numpy 1.x batch as the published CIFAR files are: numpy.core names, str state read as latin1
    legacy = (b"\x80\x02}q\x00(U\x04dataq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03K\x00"
              b"\x85U\x01b\x87Rq\x04(K\x01K\x01K\x02\x86cnumpy\ndtype\nq\x05U\x02u1K\x00K\x01\x87Rq\x06(K\x03U\x01|NNNJ"
              b"\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x02\x07\xfftbU\x06labelsq\x07]q\x08(K\x03K\x04eu.")
    (tmp_path / "legacy").write_bytes(legacy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DeprecationWarning for numpy.core either
        back = load_data_pickle(tmp_path / "legacy", "CIFAR batch")
    assert back["data"].tolist() == [[7, 255]] and back["labels"] == [3, 4]


def test_not_a_pickle_is_one_line(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x00not a pickle at all")
    with pytest.raises(ValueError, match=r"junk is not a CIFAR batch: ") as err:
        load_data_pickle(tmp_path / "junk", "CIFAR batch")
    assert "\n" not in str(err.value)


def test_the_command_line_refuses_a_crafted_batch_in_one_line(tmp_path):
    marker = tmp_path / "PWNED"
    root = crafted_cifar(tmp_path / "data", _System(marker), 2)
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "run_svi.py"), "--dataset", "cifar10",
                             "--data-root", str(root), "--out", str(tmp_path / "run")], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: refusing ") and "data_batch_1: loading it would call posix.system" in lines[0]
    assert not marker.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("container", ["zip", "raw"])
def test_a_checkpoint_that_would_run_code_is_one_line_without_warnings(tmp_path, container):
    marker = tmp_path / "PWNED"
    path = tmp_path / "checkpoint.pt"
    if container == "zip":
        torch.save({"system": _Open(marker)}, path)
    else:  # a bare pickle (protocol 4), which torch warns about before refusing
        path.write_bytes(pickle.dumps({"system": _Open(marker)}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
    assert not caught, [str(w.message) for w in caught]
    assert "loading it would run code" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_resume_of_a_crafted_checkpoint_through_the_command_line(tmp_path, fake_mnist):
    """--resume on a folder whose checkpoint would run code: one line on stderr, exit status 2, nothing runs."""
    from pyro_ncl.config import Config
    from pyro_ncl.run_folder import save_config
    data = fake_mnist(tmp_path / "data", train=32, test=8)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(Config(dataset="mnist", data_root=str(data), batch_size=16, width=2, hidden_dim=8,
                       feature_dim=4).resolved(), run_dir / "config.json")
    marker = tmp_path / "PWNED"
    (run_dir / "checkpoint.pt").write_bytes(pickle.dumps({"system": _System(marker)}, protocol=4))
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "run_svi.py"), "--resume", str(run_dir)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "loading it would run code" in lines[0], result.stderr
    assert not marker.exists()
