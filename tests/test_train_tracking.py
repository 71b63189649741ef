"""End to end against a real `mlflow server`: train through the CLI, read everything back over HTTP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from focusml.core.run import run as run_untracked
from focusml.tracking import run
from focusml.core.train import Callbacks

REPO = Path(__file__).resolve().parents[1]


def focusml_cli(args, env, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "focusml", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def runs_of(experiment: str):
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return MlflowClient().search_runs([exp.experiment_id])


def test_cli_train_logs_everything(tracking_env, cli_env, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("method: baseline\nepochs: 5\nbatch_size: 128\nseed: 3\n")
    res = focusml_cli(["train", "--config", str(cfg), "--epochs", "1", "--experiment", "cli-e2e"], cli_env, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "acc/test" in res.stdout and "epoch 1/1" in res.stderr
    (r,) = runs_of("cli-e2e")
    client = MlflowClient()
    assert r.info.status == "FINISHED"
    p = r.data.params
    assert p["method"] == "baseline" and p["epochs"] == "1" and p["seed"] == "3" and p["batch_size"] == "128"
    assert len(p["dataset_fingerprint"]) == 16
    m = r.data.metrics
    for key in ["acc/test", "acc/test_confounded", "acc/test_clean", "bacc/test", "f1/test", "wr/test",
                "cam_in_mask/test", "acc/val", "wr/val", "loss/train", "loss/ce", "loss/penalty",
                "acc/test_cf", "flip/test", "evidence_in_mask/test", "acc/val_cf", "flip/val", "evidence_in_mask/val",
                "acc/val_clean", "selected_epoch", "selected/acc/val_cf", "lr"]:
        assert key in m, key
    assert 0 <= m["acc/test"] <= 1 and 0 <= m["wr/test"] <= 100
    assert [h.step for h in client.get_metric_history(r.info.run_id, "acc/val")] == [1]  # epochs count from 1
    files = {f.path for f in client.list_artifacts(r.info.run_id, "figures")}
    assert {"figures/confusion_matrix.png", "figures/cam_grid_test.png"} <= files
    ckpts = [f.path for f in client.list_artifacts(r.info.run_id, "checkpoints")]
    # one epoch: the selected checkpoint is the last one; resume.pt: the training state `--resume` continues from
    assert ckpts == ["checkpoints/last.pt", "checkpoints/resume.pt"]
    images = [f.path for f in client.list_artifacts(r.info.run_id, "images")]
    assert any("cam_grid_val" in i for i in images), images
    state = torch.load(client.download_artifacts(r.info.run_id, "checkpoints/last.pt", str(tmp_path)),
                       weights_only=True)
    assert "classifier.weight" in state
    assert {i.dataset.name for i in r.inputs.dataset_inputs} == {"decoy-digits-train", "decoy-digits-val", "decoy-digits-test"}
    # the LoggedModel is named after its run (the UI's model lists say which run each is); runs:/ID/NAME loads it
    assert r.info.run_name == "baseline-decoy-digits-s3"
    assert client.get_logged_model(r.outputs.model_outputs[0].model_id).name == r.info.run_name
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{r.info.run_id}/{r.info.run_name}")
    assert pyfunc.metadata.signature is not None
    assert pyfunc.predict(np.random.rand(1, 1, 28, 28).astype(np.float32)).shape == (1, 11)  # 10 classes + prediction
    network = pyfunc.unwrap_python_model().network  # the torch module, CAM-capable
    assert network(torch.rand(2, 1, 28, 28)).shape == (2, 10) and hasattr(network, "forward_features")


def test_unreachable_server_is_refused_before_any_run(cli_env, tmp_path, free_port):
    env = dict(cli_env, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    res = focusml_cli(["train", "--epochs", "1"], env, tmp_path, timeout=120)
    assert res.returncode == 2
    assert "cannot reach the MLflow tracking server" in res.stderr and "focusml server" in res.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--epochs", "0"], "--epochs is 0"),
    (["--method", "baseline", "--dilate", "1"], "does not apply to method 'baseline'"),
])
def test_bad_cli_input_exits_2_and_leaves_no_run(tracking_env, cli_env, tmp_path, args, fragment):
    res = focusml_cli(["train", "--experiment", "bad-input", *args], cli_env, tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    assert fragment in res.stderr
    assert runs_of("bad-input") == []


def test_folder_errors_leave_no_run(tracking_env, cli_env, tmp_path):
    from PIL import Image

    root = tmp_path / "ds"
    for split in ("train", "val", "test"):
        for cls in ("a", "b"):
            d = root / "images" / split / cls
            d.mkdir(parents=True)
            Image.new("L", (16, 16)).save(d / "x.png")
            md = root / "masks" / split / cls
            md.mkdir(parents=True)
            Image.new("L", (8, 8) if (split == "val" and cls == "b") else (16, 16)).save(md / "x.png")
    res = focusml_cli(["train", "--dataset", "folder", "--data-root", str(root), "--experiment", "folder-bad"],
                      cli_env, tmp_path, timeout=120)
    assert res.returncode == 2 and "masks/val/b/x.png is 8×8 but its image" in res.stderr, res.stderr
    (root / "masks" / "val" / "b" / "x.png").unlink()  # no mask file: not annotated, which is fine
    res = focusml_cli(["train", "--method", "upper_bound", "--dataset", "folder", "--data-root", str(root),
                       "--experiment", "folder-bad"], cli_env, tmp_path, timeout=120)
    assert res.returncode == 2 and "no clean split" in res.stderr, res.stderr
    assert runs_of("folder-bad") == []


def test_failure_after_start_marks_run_failed(tracking_env, tiny_config):
    class Boom(Callbacks):
        def on_epoch_end(self, epoch, metrics, model):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run(tiny_config(experiment="fails"), callbacks=Boom())
    (r,) = runs_of("fails")
    assert r.info.status == "FAILED"


@pytest.mark.slow
def test_runs_are_reproducible_from_their_seed(tiny_config):
    a = run_untracked(tiny_config(seed=5)).metrics
    b = run_untracked(tiny_config(seed=5)).metrics
    for k in ("acc/test", "wr/test", "cam_in_mask/test"):
        assert a[k] == b[k]


def test_upper_bound_trains_on_clean_split(digits):
    from focusml.core.methods import get

    assert get("upper_bound").train_split == "train_clean"
    assert digits.split("train_clean").masks.sum() == 0


def test_mlproject_is_current():
    from focusml.generate.mlproject import render

    assert (REPO / "MLproject").read_text() == render(), "run `make mlproject` to regenerate MLproject"


@pytest.mark.parametrize("entry, how", [("baseline", "env"), ("upper_bound", "option")])
def test_mlflow_run_entry_points(tracking_env, cli_env, entry, how):
    """`mlflow run` puts the run where MLFLOW_EXPERIMENT_NAME or --experiment-name says; focusml adopts
    it and gives it its own run name and tags."""
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    name = f"mlproject-{entry}"
    env, where = (dict(cli_env, MLFLOW_EXPERIMENT_NAME=name), []) if how == "env" else (cli_env, ["--experiment-name", name])
    res = subprocess.run([mlflow_bin, "run", str(REPO), "-e", entry, "-P", "epochs=1", "-P", "batch_size=128",
                          "--env-manager", "local", *where],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    (r,) = runs_of(name)
    assert r.info.status == "FINISHED" and r.info.run_name == f"{entry}-decoy-digits-s0"
    assert r.data.tags["focusml.method"] == entry and r.data.tags["focusml.kind"] == "training"
    assert r.data.tags["mlflow.project.entryPoint"] == entry and "acc/test" in r.data.metrics
    assert mlflow.get_experiment_by_name(name).tags["mlflow.experimentKind"] == "custom_model_development"
