"""Results that describe the run they belong to: strict-JSON metrics (null for NaN), sweep.py reusing only runs
with the same settings and failing when a point fails, compare.py reading finished runs only (issue 12, item 8)."""
import importlib
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

import pyro_ncl.launcher
import pyro_ncl.commands.sweep
from pyro_ncl.config import Config
from pyro_ncl.cli import build_parser, config_from_args
from pyro_ncl.run_folder import save_config
from pyro_ncl.run_folder import read_metrics, write_metrics

ROOT = Path(__file__).resolve().parent.parent


def script(name: str):
    module = importlib.import_module(f"pyro_ncl.commands.{name}")
    return module


def strict(text: str):
    """json.loads that refuses NaN and Infinity, as strict JSON readers (JavaScript, jq, Go) do."""
    def refuse(name):
        raise ValueError(f"bare {name}")
    return json.loads(text, parse_constant=refuse)


def test_metrics_hold_null_for_nan_and_read_back_as_nan(tmp_path):
    path = tmp_path / "metrics.json"
    write_metrics(path, {"knn_accuracy": float("nan"), "sparsity": 0.5, "gain": float("inf"),
                         "retrieval": {"16": {"P@1": float("nan")}}, "steps": 4})
    saved = strict(path.read_text())
    assert saved == {"knn_accuracy": None, "sparsity": 0.5, "gain": None, "retrieval": {"16": {"P@1": None}},
                     "steps": 4}
    back = read_metrics(path)
    assert math.isnan(back["knn_accuracy"]) and math.isnan(back["retrieval"]["16"]["P@1"]) and back["steps"] == 4


def test_run_svi_writes_strict_json_when_a_metric_is_nan(tmp_path, fake_mnist, monkeypatch):
    from pyro_ncl import experiment  # the run's lifecycle, which run_svi.py fronts
    run_svi = script("run_svi")
    monkeypatch.setattr(experiment, "evaluate", lambda *a, **k: {"knn_accuracy": float("nan"), "sparsity": 0.25})
    monkeypatch.setattr(experiment, "plot_loss_curve", lambda *a: None)
    data = fake_mnist(tmp_path / "data", train=32, test=8)
    out = tmp_path / "run"
    assert run_svi.cli(["--dataset", "mnist", "--data-root", str(data), "--epochs", "1", "--batch-size", "16",
                        "--width", "2", "--hidden-dim", "8", "--feature-dim", "4", "--out", str(out)]) == 0
    assert strict((out / "metrics.json").read_text())["knn_accuracy"] is None


# ---------------------------------------------------------------- sweep.py
class FakeRunSvi:
    """Stands in for the run_svi.py subprocess: records the command; a fresh or resumed run writes config.json
    (the settings the command asks for) and metrics.json, or fails with ``status``."""

    def __init__(self, status=0):
        self.status, self.commands = status, []

    def __call__(self, command, **kwargs):
        argv = command[2:]
        self.commands.append(argv)
        if self.status == 0:
            if "--resume" in argv:
                out = Path(argv[argv.index("--resume") + 1])
            else:
                args = build_parser().parse_args(argv)
                out = Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                save_config(config_from_args(args).resolved(), out / "config.json")
            write_metrics(out / "metrics.json", {"knn_accuracy": 0.5, "train_seconds": 10.0})
        return SimpleNamespace(returncode=self.status, stderr="" if self.status == 0 else "error: it broke\n")


def sweep_args(out, *grid, reference=(), run_args=("--epochs", "2")):
    return SimpleNamespace(out=str(out), grid=list(grid), reference=list(reference), run_args=list(run_args))


@pytest.fixture
def sweep(monkeypatch):
    monkeypatch.setattr(pyro_ncl.commands.sweep, "plot", lambda rows, out: None)
    return pyro_ncl.commands.sweep


def test_sweep_reuses_runs_of_its_settings_and_never_overwrites_others(sweep, tmp_path, monkeypatch, capsys):
    """The launcher's one policy (pyro_ncl.launcher, also frontier.py's): a finished run of the same settings is
    skipped, an interrupted one resumed, a folder holding a run with other settings refused and left as it is."""
    fake = FakeRunSvi()
    monkeypatch.setattr(pyro_ncl.launcher, "run_command", fake)
    sweep.run_sweep(sweep_args(tmp_path, "prior_prob=0.5,0.8"))
    assert len(fake.commands) == 2
    sweep.run_sweep(sweep_args(tmp_path, "prior_prob=0.5,0.8"))  # same settings: done before
    assert len(fake.commands) == 2 and capsys.readouterr().out.count("done before") == 2
    before = (tmp_path / "prior_prob=0.5" / "metrics.json").read_text()
    with pytest.raises(SystemExit):  # --epochs changed: refused, nothing rerun or removed
        sweep.run_sweep(sweep_args(tmp_path, "prior_prob=0.5,0.8", run_args=("--epochs", "3")))
    out = capsys.readouterr().out
    assert len(fake.commands) == 2 and out.count("holds a run with other settings (epochs: 2 → 3)") == 2
    assert (tmp_path / "prior_prob=0.5" / "metrics.json").read_text() == before
    (tmp_path / "prior_prob=0.5" / "metrics.json").unlink()  # an interrupted run of these settings: resumed
    (tmp_path / "prior_prob=0.5" / "checkpoint.pt").write_bytes(b"")
    sweep.run_sweep(sweep_args(tmp_path, "prior_prob=0.5,0.8"))
    assert fake.commands[2] == ["--resume", str(tmp_path / "prior_prob=0.5")] and len(fake.commands) == 3


def test_sweep_fails_when_a_point_fails(sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pyro_ncl.launcher, "run_command", FakeRunSvi(status=2))
    with pytest.raises(SystemExit) as exit_:
        sweep.run_sweep(sweep_args(tmp_path, "prior_prob=0.5,0.8"))
    assert exit_.value.code == 1
    assert "2 of 2 points failed" in capsys.readouterr().err


@pytest.mark.parametrize("grid,reference,run_args,expected", [
    (["prior_prob=0.5,2"], [], [], "point prior_prob=2: --prior-prob must lie in (0, 1), got 2.0"),
    (["epochs=1,two"], [], [], "point epochs=two: argument --epochs: invalid int value: 'two'"),
    (["prior_prob=0.5"], ["{tmp}/nowhere"], [], "nowhere holds no finished run"),
    (["prior_prob=0.5"], ["{tmp}/unfinished"], [], "unfinished holds no finished run (no metrics.json)"),
    (["prior_prob=0.5"], [], ["--out", "x"], "drop --out after --"),
    (["nosuch=1"], [], [], "'nosuch' is not a setting of run_svi.py"),
])
def test_sweep_checks_every_point_and_reference_before_running_any(sweep, tmp_path, monkeypatch, grid, reference,
                                                                   run_args, expected):
    fake = FakeRunSvi()
    monkeypatch.setattr(pyro_ncl.launcher, "run_command", fake)
    (tmp_path / "unfinished").mkdir()
    save_config(Config(), tmp_path / "unfinished" / "config.json")
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        sweep.run_sweep(sweep_args(tmp_path / "sweep", *grid, reference=[r.format(tmp=tmp_path) for r in reference],
                              run_args=run_args))
    assert fake.commands == [] and not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------- compare.py
def _run(folder: Path, metrics=None, eval_metrics=None, **config) -> Path:
    folder.mkdir(parents=True)
    save_config(Config(**config).resolved(), folder / "config.json")
    if metrics is not None:
        (folder / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    if eval_metrics is not None:
        (folder / "eval").mkdir()
        (folder / "eval" / "metrics.json").write_text(json.dumps(eval_metrics))
    return folder


def compare_main(*argv):
    compare = script("compare")
    return compare.main(compare.parser().parse_args([str(a) for a in argv]))


def test_compare_leaves_out_unfinished_runs_and_counts_null_as_missing(tmp_path, capsys):
    done = _run(tmp_path / "done", {"knn_accuracy": 0.5, "sparsity": None}, method="ncl")
    other = _run(tmp_path / "other", {"knn_accuracy": 0.7, "sparsity": 0.2}, method="ncl", seed=1)
    unfinished = _run(tmp_path / "unfinished", None, {"knn_accuracy": 0.9}, method="ncl", seed=2)  # eval/ only
    stats = compare_main(done, other, unfinished, "--out", tmp_path / "cmp")
    assert stats["ncl"]["knn_accuracy"]["n"] == 2 and stats["ncl"]["knn_accuracy"]["mean"] == pytest.approx(0.6)
    assert stats["ncl"]["sparsity"]["n"] == 1
    assert f"skipping {unfinished}: no metrics.json" in capsys.readouterr().err


def test_compare_names_a_corrupt_metrics_file_and_refuses_a_file_as_out(tmp_path):
    good = _run(tmp_path / "good", {"knn_accuracy": 0.5})
    bad = _run(tmp_path / "bad", '{"knn_accuracy": 0.5,')
    with pytest.raises(ValueError, match=f"{bad / 'metrics.json'} does not parse as JSON"):
        compare_main(good, bad, "--out", tmp_path / "cmp")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="is a file; expected a folder"):
        compare_main(good, "--out", tmp_path / "a_file")


@pytest.mark.parametrize("argv,expected", [
    (["--top-images", "0"], "error: argument --top-images: must be at least 1, got 0"),
    (["--tsne-samples", "-1"], "error: argument --tsne-samples: must be at least 0, got -1"),
    (["--batch-size", "0"], "error: argument --batch-size: must be at least 1, got 0"),
    (["--device", "bogus"], "--device must be auto, cpu, cuda or cuda:N, got 'bogus'"),
    (["--device", "cpu"], "is not a folder (expected a finished run's folder"),
])
def test_evaluate_refuses_bad_arguments_in_one_line(tmp_path, capsys, argv, expected):
    evaluate = script("evaluate")
    try:
        evaluate.main(evaluate.parser().parse_args([str(tmp_path / "nowhere"), *argv]))
    except SystemExit as exit_:  # argparse: one line, status 2
        assert exit_.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], lines
    except ValueError as err:  # the script's __main__ prints it as one line, status 2
        assert expected in str(err) and "\n" not in str(err)
    else:
        pytest.fail("accepted")
