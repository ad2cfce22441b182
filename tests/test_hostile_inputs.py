"""Hostile input through the command line: each is refused with exit status 2 and one line on stderr naming what is
wrong, before any training starts, and a finished run folder (hashed before and after) is left exactly as it was.

Most cases point ``--out`` at the finished run with ``--overwrite``, so a setting checked too late would delete
its results; the rest resume crafted copies of it (their folders are hashed too). Settings are refused before the
data are opened; data-dependent ones after opening them, and still before anything is written.
"""
import gzip
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import idx_bytes, write_fake_mnist

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "run_svi.py"
FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed (tiny_run trains on it)")

DATA = "--dataset mnist --data-root {data}".split()
OVER = "--out {finished} --overwrite".split()
# (id, argv, expected in the one stderr line, whether the data may be opened before the refusal)
CASES = [
    # settings on the command line: types and ranges of every field, refused before the data are opened
    ("width 0", ["--width", "0", *OVER], "--width must be at least 1, got 0", False),
    ("device bogus", ["--device", "bogus", *OVER], "--device must be auto, cpu, cuda or cuda:N, got 'bogus'", False),
    ("device mps", ["--device", "mps", *OVER], "--device must be auto, cpu, cuda or cuda:N, got 'mps'", False),
    ("device meta", ["--device", "meta", *OVER], "--device must be auto, cpu, cuda or cuda:N, got 'meta'", False),
    ("eval-subset 0", ["--eval-subset", "0", *OVER], "--eval-subset must be at least 1, got 0", False),
    ("eval-batch-size -5", ["--eval-batch-size", "-5", *OVER], "--eval-batch-size must be at least 1, got -5",
     False),
    ("momentum -1", ["--momentum", "-1", *OVER], "--momentum must lie in [0, 1), got -1.0", False),
    ("knn-k 0", ["--knn-k", "0", *OVER], "--knn-k must be at least 1, got 0", False),
    ("kl-weight nan", ["--kl-weight", "nan", *OVER], "--kl-weight must be a finite number, got nan", False),
    ("lr inf", ["--lr", "inf", *OVER], "--lr must be a finite number, got inf", False),
    ("epochs two", ["--epochs", "two", *OVER], "argument --epochs: invalid int value: 'two'", False),
    ("epochs 0", ["--epochs", "0", *OVER], "--epochs must be at least 1, got 0", False),
    ("seed -1", ["--seed", "-1", *OVER], "--seed must lie in [0, 4294967295], got -1", False),
    ("amp fp16", ["--amp", "fp16", *OVER], "--amp: unknown mixed-precision mode 'fp16'", False),
    ("baseline nosuch", ["--baseline", "nosuch", *OVER], "--baseline: unknown baseline 'nosuch'", False),
    ("backbone vit", ["--backbone", "vit", *OVER], "--backbone: unknown backbone 'vit'", False),
    ("prior concrete, guide relaxed_st", ["--prior", "concrete", *OVER], "--prior concrete scores relaxed", False),
    ("out empty", ["--out", "", "--overwrite"], "--out must not be empty", False),
    ("out a file", ["--out", "{file}", "--overwrite"], "is a file; expected a folder", False),
    ("out without --overwrite", ["--out", "{finished}"], "already holds results", False),
    ("subset 1", ["--subset", "1", *OVER], "--subset must be at least 2, got 1", False),
    ("batch-size > subset", ["--batch-size", "512", "--subset", "256", *OVER], "is larger than --subset 256", False),
    ("knn-k > eval-subset", ["--knn-k", "50", "--eval-subset", "10", *OVER], "--knn-k 50 is larger than --eval-subset",
     False),
    ("bcl-alpha 2", ["--method", "bcl", "--bcl-alpha", "2", *OVER], "--bcl-alpha must lie in [0.5, 1], got 2.0", False),
    ("spurious-correlation 1.5", ["--dataset", "scenes", "--spurious-correlation", "1.5", *OVER],
     "--spurious-correlation must lie in [0, 1], got 1.5", False),
    ("image-size 4", ["--image-size", "4", *OVER], "--image-size must be at least 8, got 4", False),
    ("num-workers -1", ["--num-workers", "-1", *OVER], "--num-workers must be at least 0, got -1", False),
    ("prior-prob 1", ["--prior-prob", "1", *OVER], "--prior-prob must lie in (0, 1), got 1.0", False),
    ("checkpoint-every -1", ["--checkpoint-every", "-1", *OVER], "--checkpoint-every must be at least 0", False),
    ("unknown flag", ["--no-such-flag", *OVER], "unrecognized arguments: --no-such-flag", False),
    ("topk 1", ["--topk", "1", *OVER], "--topk must be at least 2 (one kept entry leaves a one-hot feature", False),
    ("topk > feature-dim", ["--topk", "200", *OVER], "--topk must lie in [2, --feature-dim 128], got 200", False),
    ("aux-weight on exact_k", ["--aux-weight", "0.1", *OVER], "--aux-weight sets the aux-k term of --guide "
     "exact_k_aux, not of --guide exact_k", False),
    ("aux-dead-steps 0", ["--guide", "exact_k_aux", "--aux-dead-steps", "0", *OVER],
     "--aux-dead-steps must be at least 1, got 0", False),
    ("test-gate median", ["--test-gate", "median", *OVER], "--test-gate: unknown test-time gate 'median'", False),
    # presets: method settings only, every value checked, named by file and key
    ("preset sets out and overwrite", ["--preset", "{preset_out}"], "sets out, overwrite: a preset holds settings",
     False),
    ("preset sets resume", ["--preset", "{preset_resume}", *OVER], "sets resume: a preset holds settings", False),
    ("preset sets device", ["--preset", "{preset_device}", *OVER], "sets device: a preset holds settings", False),
    ("preset epochs '2'", ["--preset", "{preset_string}", *OVER], "epochs must be an integer, got the string '2'",
     False),
    ("preset lr 1e-3", ["--preset", "{preset_exponent}", *OVER], "YAML reads a number with an exponent", False),
    ("preset unknown key", ["--preset", "{preset_unknown}", *OVER], "has unknown settings: learning_rate", False),
    ("preset a list", ["--preset", "{preset_list}", *OVER], "must be a mapping of setting: value", False),
    # --resume: the folder's own config.json and checkpoint, checked
    ("resume a regular file", ["--resume", "{file}"], "is not a folder (expected a run folder", False),
    ("resume with a changed setting", ["--resume", "{finished}", "--epochs", "3"], "drop --epochs", False),
    ("resume config.json epochs '2'", ["--resume", "{crafted_string}"],
     "config.json: epochs must be an integer, got the string '2'", False),
    ("resume config.json not JSON", ["--resume", "{crafted_json}"], "config.json does not parse as JSON", False),
    ("resume a bare-tensor checkpoint", ["--resume", "{crafted_tensor}"],
     "is not a training checkpoint: it holds a Tensor", True),
    ("resume a checkpoint without system", ["--resume", "{crafted_nosystem}"],
     "is not a training checkpoint of this code: it lacks system", True),
    # data that would silently lie or hang, refused after opening them and before anything is written
    ("knn-k > training images", [*DATA, "--knn-k", "1000", *OVER], "--knn-k 1000 is larger than the 256 training",
     True),
    ("batch-size > training images", [*DATA, "--batch-size", "1000", *OVER],
     "--batch-size 1000 is larger than the 256 training images", True),
    ("images 1-D", [*DATA.copy()[:-1], "{bad_1d}", *OVER], "expected images [N, rows, columns]", True),
    ("images 4-D", [*DATA.copy()[:-1], "{bad_4d}", *OVER], "expected images [N, rows, columns]", True),
    ("test images 14 px", [*DATA.copy()[:-1], "{bad_test_size}", *OVER], "test images are (1, 14, 14)", True),
    ("images a FIFO", [*DATA.copy()[:-1], "{bad_fifo}", *OVER], "is not a regular file (a named pipe)", True),
    ("images linked to /dev/zero", [*DATA.copy()[:-1], "{bad_dev_zero}", *OVER],
     "is not a regular file (a character device)", True),
    ("images a folder", [*DATA.copy()[:-1], "{bad_folder}", *OVER], "is not a regular file (a folder)", True),
    ("header claims more data", [*DATA.copy()[:-1], "{bad_header}", *OVER], "is truncated: expected 784000000 values",
     True),
    (".gz not gzip", [*DATA.copy()[:-1], "{bad_not_gzip}", *OVER], "Not a gzipped file", True),
    (".gz truncated", [*DATA.copy()[:-1], "{bad_truncated_gz}", *OVER], "Compressed file ended", True),
    ("empty test split", [*DATA.copy()[:-1], "{bad_empty_test}", *OVER], "holds no images", True),
    ("labels out of range", [*DATA.copy()[:-1], "{bad_labels}", *OVER], "labels must lie in 0..9, found 0..200", True),
    ("images and labels disagree", [*DATA.copy()[:-1], "{bad_count}", *OVER], "holds 256 images but", True),
]


def digest(folder: Path) -> str:
    """Names, modification times and bytes of everything under ``folder``."""
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        h.update(f"{path.relative_to(folder)} {path.lstat().st_mtime_ns}".encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def _idx(path: Path, array: np.ndarray) -> None:
    path.write_bytes(idx_bytes(array.astype(np.uint8)))


def _spoil(root: Path, good: Path, how) -> str:
    shutil.copytree(good, root)
    how(root)
    return str(root)


@pytest.fixture(scope="module")
def world(tiny_run, tmp_path_factory):
    """Paths the cases name: the finished run (a copy of the session's tiny run), good fake MNIST, spoiled copies
    of it, presets and crafted run folders."""
    tmp = tmp_path_factory.mktemp("hostile")
    finished = tmp / "finished"
    shutil.copytree(tiny_run("bayesncl"), finished)
    data = write_fake_mnist(tmp / "data", train=256, test=64)
    paths = {"finished": str(finished), "data": str(data), "file": str(tmp / "a_file")}
    (tmp / "a_file").write_text("not a folder")
    rng = np.random.default_rng(0)
    images = "train-images-idx3-ubyte"
    spoils = {
        "1d": lambda r: _idx(r / images, rng.integers(0, 256, 256 * 784)),
        "4d": lambda r: _idx(r / images, rng.integers(0, 256, (256, 1, 28, 28))),
        "test_size": lambda r: _idx(r / "t10k-images-idx3-ubyte", rng.integers(0, 256, (64, 14, 14))),
        "fifo": lambda r: ((r / images).unlink(), os.mkfifo(r / images)),
        "dev_zero": lambda r: ((r / images).unlink(), (r / images).symlink_to("/dev/zero")),
        "folder": lambda r: ((r / images).unlink(), (r / images).mkdir()),
        "header": lambda r: (r / images).write_bytes(bytes([0, 0, 8, 3]) + (10 ** 6).to_bytes(4, "big")
                                                     + (28).to_bytes(4, "big") * 2 + b"\0" * 256 * 784),
        "not_gzip": lambda r: (r / images).rename(r / f"{images}.gz"),
        "truncated_gz": lambda r: ((r / f"{images}.gz").write_bytes(gzip.compress((r / images).read_bytes())[:5000]),
                                   (r / images).unlink()),
        "empty_test": lambda r: (_idx(r / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28))),
                                 _idx(r / "t10k-labels-idx1-ubyte", np.zeros(0))),
        "labels": lambda r: _idx(r / "train-labels-idx1-ubyte", np.arange(256) % 201),
        "count": lambda r: _idx(r / "train-labels-idx1-ubyte", np.arange(255) % 10),
    }
    for name, how in spoils.items():
        paths[f"bad_{name}"] = _spoil(tmp / f"bad_{name}", data, how)
    presets = {"out": f"out: {finished}\noverwrite: true\n", "resume": f"resume: {finished}\n",
               "device": "device: cuda\n", "string": "epochs: '2'\n", "exponent": "lr: 1e-3\n",
               "unknown": "learning_rate: 0.1\n", "list": "- epochs: 2\n"}
    for name, text in presets.items():
        (tmp / f"preset_{name}.yaml").write_text(text)
        paths[f"preset_{name}"] = str(tmp / f"preset_{name}.yaml")
    config = json.loads((finished / "config.json").read_text())
    config.update(dataset="mnist", data_root=str(data))
    state = torch.load(finished / "checkpoint.pt", weights_only=True)
    crafted = {"string": ({**config, "epochs": "2"}, None), "json": (None, None),
               "tensor": (config, torch.zeros(3)),
               "nosystem": (config, {k: v for k, v in {**state, "config": config}.items() if k != "system"})}
    for name, (values, checkpoint) in crafted.items():
        folder = tmp / f"crafted_{name}"
        shutil.copytree(finished, folder)
        (folder / "config.json").write_text(json.dumps(values) if values is not None else "{epochs: 2")
        if checkpoint is not None:
            torch.save(checkpoint, folder / "checkpoint.pt")
        (folder / "checkpoint.prev.pt").unlink(missing_ok=True)
        paths[f"crafted_{name}"] = str(folder)
    return paths


def load_run_svi():
    module = importlib.import_module("pyro_ncl.commands.run_svi")
    return module


@pytest.fixture(scope="module")
def run_svi():
    return load_run_svi()


@pytest.mark.parametrize("argv,expected,opens_data", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_in_one_line_and_nothing_changes(argv, expected, opens_data, world, run_svi,
                                                                 monkeypatch, capsys):
    argv = [a.format(**world) for a in argv]
    folders = [Path(world["finished"])] + [Path(a) for a in argv if a.startswith(str(Path(world["finished"]).parent))
                                           and Path(a).is_dir() and "crafted" in a]
    before = [digest(f) for f in folders]
    opened = []

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    def record(*args, **kwargs):
        opened.append(args)
        return load_dataset(*args, **kwargs)
    from pyro_ncl import experiment  # the run's lifecycle, which run_svi.py fronts
    load_dataset = experiment.load_dataset
    monkeypatch.setattr(experiment, "train", no_training)
    monkeypatch.setattr(experiment, "load_dataset", record)
    capsys.readouterr()
    try:
        code = run_svi.cli(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert "Traceback" not in err
    assert [digest(f) for f in folders] == before
    assert opens_data or not opened, "refused only after opening the data"


def test_a_real_process_gives_status_2_and_one_line(world):
    argv = next(c[1] for c in CASES if c[0] == "resume config.json epochs '2'")
    result = subprocess.run([sys.executable, str(SCRIPT), *(a.format(**world) for a in argv)], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def test_every_setting_refuses_a_value_of_the_wrong_type_naming_the_key(tmp_path):
    """Generic over the Config fields (a field added with its type is covered): a config.json holding a value of
    the wrong type for any setting is refused, naming the file, the key and the type expected."""
    from pyro_ncl.config import FIELDS, Config
    from pyro_ncl.run_folder import config_from_run
    wrong = {"int": ("2", "an integer"), "float": ("0.5", "a number"), "bool": ("yes", "true or false"),
             "str": (3, "a string")}
    for name, f in FIELDS.items():
        kind = str(f.type).replace("Optional[", "").rstrip("]")
        value, expected = wrong[kind]
        (tmp_path / "config.json").write_text(json.dumps({**Config().to_dict(), name: value}))
        with pytest.raises(ValueError) as err:
            config_from_run(tmp_path)
        assert f"config.json: {name} must be {expected}, got" in str(err.value), name


def test_an_unreadable_data_file_is_one_line_naming_it(tmp_path, monkeypatch):
    """chmod 000 where the tests do not run as root; the same refusal through a read that fails otherwise."""
    from pyro_ncl.data import idx
    path = write_fake_mnist(tmp_path, train=4, test=2) / "train-images-idx3-ubyte"
    if os.geteuid() != 0:
        path.chmod(0)
        with pytest.raises(ValueError, match=f"cannot read {path}: Permission denied"):
            idx.read_idx(path)
        path.chmod(0o644)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(idx, "open", refuse, raising=False)
    with pytest.raises(ValueError, match=f"cannot read {path}: Permission denied"):
        idx.read_idx(path)
