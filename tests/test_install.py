"""A non-editable install (``pip install .``) carries what a run needs: the presets and recipes ship as package data
(pyro_ncl.preset_files, pyro_ncl.recipe_files), so ``--preset`` works from the installed copy, outside the checkout;
the installed copy has no git commit to stamp and says so (``git_commit: null``)."""
import json
import os
import subprocess
import sys

from conftest import ROOT


def test_a_non_editable_install_runs_a_preset(tmp_path, fake_mnist):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(ROOT)], check=True, capture_output=True, cwd=tmp_path)
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    where = subprocess.run([sys.executable, "-c", "import pyro_ncl; print(pyro_ncl.__file__)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(site))  # the installed copy, not the checkout
    data = fake_mnist(tmp_path / "data", train=64, test=16)
    run = subprocess.run([sys.executable, "-m", "pyro_ncl.commands.run_svi", "--preset", "bayesncl_relaxed_st",
                          "--dataset", "mnist", "--data-root", str(data), "--subset", "64", "--epochs", "1",
                          "--batch-size", "32", "--width", "2", "--hidden-dim", "8", "--feature-dim", "8",
                          "--probe-epochs", "1", "--quiet", "--out", str(tmp_path / "run")],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["guide"], config["prior_prob"], config["kl_weight"]) == ("relaxed_st", 0.8, 3e-5)  # the preset's
    assert config["provenance"]["git_commit"] is None
