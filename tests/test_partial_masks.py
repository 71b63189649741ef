"""A folder dataset where few images have masks, or none: training through the CLI, what the run says."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import numpy as np
from mlflow import MlflowClient


def train(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "focusml", "train", "--dataset", "folder", "--epochs", "1",
                           "--batch-size", "16", "--no-log-model", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def the_run(experiment: str, method: str):
    exp = mlflow.get_experiment_by_name(experiment)
    (r,) = MlflowClient().search_runs([exp.experiment_id], f"params.method = '{method}'")
    return r


def test_cli_trains_baseline_pas_and_random_crop_with_masks_on_a_tenth_of_the_images(tracking_env, cli_env,
                                                                                      tmp_path, make_folder):
    root = make_folder(tmp_path / "data", {"train": 20, "val": 10, "test": 10}, {"train": 0.1, "val": 0.1})
    assert len(list((root / "masks" / "train").rglob("*.png"))) == 4
    assert len(list((root / "masks" / "val").rglob("*.png"))) == 2
    assert not (root / "masks" / "test").exists()
    for method in ("baseline", "pas", "random_crop"):
        res = train(["--method", method, "--data-root", str(root), "--experiment", "few-masks"], cli_env, tmp_path)
        assert res.returncode == 0, res.stderr
        r = the_run("few-masks", method)
        p, m = r.data.params, r.data.metrics
        assert r.info.status == "FINISHED"
        assert p["cf_images_val"] == "2" and p["cf_images_test"] == "0"  # annotated images only
        assert p.get("annotated_images") == (None if method == "baseline" else "4")
        assert np.isfinite(m["acc/val_cf"]) and "acc/test_cf" in m  # NaN on test: no annotated test image
        assert "focusml.warning" not in r.data.tags or "--select auto" not in r.data.tags["focusml.warning"]


def test_cli_trains_a_baseline_on_a_folder_without_masks_and_says_how_it_selected(tracking_env, cli_env, tmp_path,
                                                                                   make_folder):
    root = make_folder(tmp_path / "data", {"train": 6, "val": 3, "test": 3}, {})
    assert not (root / "masks").exists()
    res = train(["--method", "baseline", "--data-root", str(root), "--experiment", "no-masks"], cli_env, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Warning: no validation image of dataset 'folder' has a mask, so --select auto evaluated the last " \
           "epoch" in res.stderr
    r = the_run("no-masks", "baseline")
    link = f"{tracking_env}/#/experiments/{r.info.experiment_id}/runs/{r.info.run_id}?workflowType=machine_learning"
    assert f"See it in the UI: open {link}" in res.stderr  # the real server, its ML view
    assert r.info.status == "FINISHED" and r.data.params["cf_images_val"] == "0"
    assert "--select auto evaluated the last epoch" in r.data.tags["focusml.warning"]
    # a method that learns from masks has nothing to learn from: refused in one line, no run left behind
    res = train(["--method", "pas", "--data-root", str(root), "--experiment", "no-masks"], cli_env, tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "--method pas learns from masks" in res.stderr, res.stderr
    assert len(MlflowClient().search_runs([mlflow.get_experiment_by_name("no-masks").experiment_id])) == 1
