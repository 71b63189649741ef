"""MLflow and Optuna as their users expect them (issue 13).

Against a real `mlflow server`: the experiment from the environment, the LoggedModel's metrics and
datasets, the predictions table, the pyfunc's output, registered versions' description and tags,
opt-in system metrics. Without a server: `tune --set`, progress lines off a terminal, CAM grids,
the comparison's warnings and chart, the model's requirements.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.entities import Metric, Param

FINAL = ["acc/test", "acc/test_cf", "flip/test", "evidence_in_mask/test", "wr/test", "cam_in_mask/test",
         "cam_dead/test", "bacc/test", "f1/test", "selected_epoch", "selected/acc/val", "time/epoch_s_mean"]


def focusml_cli(args, env, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "focusml", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_a_run_and_its_model_as_mlflow_users_expect(tracking_env, cli_env, tmp_path):
    name = f"env-exp-{uuid.uuid4().hex[:8]}"
    env = dict(cli_env, MLFLOW_EXPERIMENT_NAME=name)  # no --experiment: the environment decides
    res = focusml_cli(["train", "--epochs", "2", "--batch-size", "128", "--select", "acc/val"], env, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    # stderr is not a terminal here: one plain line per epoch, no bar redraws
    assert "\r" not in res.stderr and "epoch 1/2 loss/train" in res.stderr and "epoch 2/2 loss/train" in res.stderr

    client = mlflow.MlflowClient()
    exp = mlflow.get_experiment_by_name(name)
    assert exp is not None and exp.tags["mlflow.experimentKind"] == "custom_model_development"
    (run,) = client.search_runs([exp.experiment_id])
    run_id, metrics = run.info.run_id, run.data.metrics
    assert run.info.run_name == "baseline-decoy-digits-s0" and run.data.tags["focusml.kind"] == "training"
    assert run.data.params["experiment"] == name
    assert not any(k.startswith("system/") for k in metrics)  # system metrics are opt-in

    # the datasets: train/val/test, features N×C×H×W and targets N
    inputs = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "testing"}
    sizes = {}
    for context, ds in inputs.items():
        profile = json.loads(ds.profile)
        n = profile["targets_shape"][0]
        assert profile["features_shape"] == [n, 1, 28, 28] and profile["targets_shape"] == [n], profile
        sizes[context] = n
    assert inputs["testing"].name == "decoy-digits-test"

    # the LoggedModel: the evaluated epoch's metrics and the final metrics, linked to their datasets
    (output,) = run.outputs.model_outputs
    selected = int(metrics["selected_epoch"])
    assert output.step == selected and 1 <= selected <= 2
    model = client.get_logged_model(output.model_id)
    linked = {m.key: m for m in model.metrics}
    for key in FINAL:
        assert linked[key].value == pytest.approx(metrics[key]), key
    val_at = {m.step: m.value for m in client.get_metric_history(run_id, "acc/val")}
    assert sorted(val_at) == [1, 2] and linked["acc/val"].value == pytest.approx(val_at[selected])
    assert linked["selected/acc/val"].value == pytest.approx(val_at[selected])
    assert linked["acc/test"].dataset_name == "decoy-digits-test"
    assert linked["selected/acc/val"].dataset_name == "decoy-digits-val"
    assert set(linked) <= set(metrics)  # nothing but the run's own numbers
    assert model.params["method"] == "baseline" and model.tags["focusml.dataset"] == "decoy-digits"

    # per-image test predictions as an MLflow table
    mlflow.set_experiment(experiment_id=exp.experiment_id)  # load_table searches the active experiment
    table = mlflow.load_table("tables/test_predictions.json", run_ids=[run_id])
    assert len(table) == sizes["testing"]
    assert {"label", "prediction", "probability", "correct", "counterfactual_prediction", "flip"} <= set(table.columns)
    assert table["correct"].mean() == pytest.approx(metrics["acc/test"])

    # the pyfunc: one probability column per class and the predicted class name
    pyfunc = mlflow.pyfunc.load_model(model.model_uri)
    out = pyfunc.predict(np.random.rand(3, 1, 28, 28).astype(np.float32))
    classes = [str(i) for i in range(10)]
    assert list(out.columns) == [*classes, "prediction"]
    assert np.allclose(out[classes].sum(axis=1), 1.0) and set(out["prediction"]) <= set(classes)
    reqs = open(mlflow.artifacts.download_artifacts(artifact_uri=f"{model.artifact_location}/requirements.txt")).read()
    lines = [r.strip() for r in reqs.splitlines() if r.strip()]
    assert "focusml" not in [r.split("==")[0] for r in lines] and all("==" in r for r in lines), lines
    assert any(r.startswith("torch==") for r in lines)

    # register: described, tagged, metrics printed, a tiny reference gap warned about
    up = client.create_run(exp.experiment_id, tags={"focusml.method": "upper_bound", "focusml.dataset": "decoy-digits"})
    client.log_batch(up.info.run_id, metrics=[Metric("acc/test", metrics["acc/test"] + 0.05, 0, 0)],
                     params=[Param(k, run.data.params[k]) for k in ("seed", "data_seed", "model")])
    client.set_terminated(up.info.run_id)
    res = focusml_cli(["register", run_id, "--name", f"reg-{name}"], env, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "acc/test" in res.stdout and "gap closed" in res.stdout and "version 1" in res.stdout
    assert "gap is only 5.0 points" in res.stderr
    assert (f"Its run among the experiment's runs, headline metrics first: open {tracking_env}/#/experiments/"
            f"{exp.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=focusml") in res.stderr
    version = client.get_model_version(f"reg-{name}", "1")
    tags = version.tags
    assert tags["focusml.method"] == "baseline" and tags["focusml.dataset"] == "decoy-digits"
    assert tags["source_run_id"] == run_id and float(tags["acc/test"]) == pytest.approx(metrics["acc/test"], abs=1e-4)
    assert float(tags["gap_closed"]) == pytest.approx(0.0) and "gap is only" in tags["focusml.warning"]
    assert "baseline on decoy-digits" in version.description and run_id in version.description
    assert "Gap closed 0%" in version.description and "acc/test" in version.description
    assert client.get_model_version_by_alias(f"reg-{name}", "champion").version == "1"


def test_system_metrics_are_logged_when_asked(tracking_env, tiny_config, monkeypatch):
    from focusml.tracking import run

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    result = run(tiny_config(experiment=f"sysm-{uuid.uuid4().hex[:8]}", system_metrics=True, batch_size=128))
    metrics = mlflow.get_run(result.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics


def test_experiment_precedence(monkeypatch):
    from focusml.tracking import resolve_experiment

    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    assert resolve_experiment() == "focusml"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    assert resolve_experiment() == "from-env" and resolve_experiment("given") == "given"


def test_requirements_are_pinned_and_never_a_bare_focusml():
    from focusml.tracking.log import requirements

    reqs = requirements()
    names = [r.split("==")[0] for r in reqs]
    assert all("==" in r and "+" not in r for r in reqs) and "focusml" not in names
    assert {"torch", "torchvision", "mlflow", "cloudpickle"} <= set(names)


def test_metrics_name_their_split():
    from focusml.tracking.log import metric_split

    assert [metric_split(k) for k in ("acc/test", "flip/test", "acc/test_cf", "selected/acc/val_cf", "acc/val",
                                      "acc/test_clean", "selected_epoch", "time/epoch_s_mean")] == \
        ["test", "test", "test", "val", "val", None, None, None]


# -- tune --set ---------------------------------------------------------------------------------


def test_tune_set_overrides_the_study_file():
    from focusml.tune import load_spec

    spec = load_spec("studies/pas.yaml", ["epochs=3", "dataset=symbols", "n_trials=4", "dilate=1",
                                          "sampler.n_startup_trials=2", "search.lam.high=10"])
    assert spec.fixed["epochs"] == 3 and spec.dataset == "symbols" and spec.n_trials == 4
    assert spec.fixed["dilate"] == 1 and "dilate" not in [p.name for p in spec.search]  # fixed: no longer searched
    assert all("dilate" not in e for e in spec.enqueue)
    assert spec.sampler_options["n_startup_trials"] == 2
    assert next(p for p in spec.search if p.name == "lam").high == 10
    assert spec.overrides == ("epochs=3", "dataset=symbols", "n_trials=4", "dilate=1", "sampler.n_startup_trials=2",
                              "search.lam.high=10")


@pytest.mark.parametrize("item, fragment", [
    ("epochs", "write KEY=VALUE"),
    ("epochs=0", "--epochs is 0"),
    ("dataset=nope", "unknown dataset 'nope'"),
    ("nope=1", "unknown option 'nope'"),
])
def test_tune_set_refuses_what_makes_no_valid_study(item, fragment):
    from focusml import FocusmlError
    from focusml.tune import load_spec

    with pytest.raises(FocusmlError, match=fragment):
        load_spec("studies/pas.yaml", [item])


# -- progress off a terminal ----------------------------------------------------------------------


def test_progress_is_one_plain_line_per_epoch_off_a_terminal(capsys):
    from focusml.cli._common import ProgressBars

    bars = ProgressBars(3, bars=False)
    for step in range(5):
        bars.on_batch_end(0, step, 5, 0.5)
    bars.on_epoch_end(0, {"loss/train": 0.5, "acc/val": 0.8, "acc/val_cf": 0.6, "wr/val": float("nan"),
                          "time/epoch_s": 1.25}, None)
    err = capsys.readouterr().err
    assert err == "epoch 1/3 loss/train 0.500 acc/val 0.800 acc/val_cf 0.600 (1.2 s)\n"


# -- figures -------------------------------------------------------------------------------------


def test_cam_grid_is_square_ish_and_says_when_a_cam_is_dead():
    from focusml.core.figures import RIGHT, WRONG, cam_grid, close, grid_shape

    assert grid_shape(20) == (4, 5) and grid_shape(4) == (2, 3) and grid_shape(1) == (1, 2)
    n = 6
    cams = torch.rand(n, 8, 8)
    cams[2] = 0
    fig = cam_grid(torch.rand(n, 1, 8, 8), torch.zeros(n, 8, 8), cams, [0, 1, 0, 1, 0, 1], [0, 0, 0, 1, 0, 1],
                   ["cat", "dog"], title="epoch 3/20")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    titles = [(ax.get_title(), ax.title.get_color()) for ax in fig.axes if ax.get_title()]
    assert texts.count("dead CAM") == 1 and "1 of 6 CAMs" in fig._suptitle.get_text()
    assert ("cat ✓", RIGHT) in titles and ("dog → cat ✗", WRONG) in titles
    assert min(ax.title.get_fontsize() for ax in fig.axes if ax.get_title()) >= 12
    close(fig)


def test_cam_series_redraws_the_same_image_as_a_fresh_figure_and_keeps_first_and_last():
    from focusml.core.figures import CamGrid, close
    from focusml.tracking.logger import cam_due

    n = 4
    images, masks = torch.rand(n, 1, 8, 8), torch.zeros(n, 8, 8)
    masks[0, 2:5, 2:5] = 1
    series = CamGrid(images, masks, [0, 1, 0, 1], ["cat", "dog"])
    for cams, preds in [(torch.rand(n, 8, 8), [0, 1, 1, 1]), (torch.zeros(n, 8, 8), [1, 1, 0, 0])]:
        fresh = CamGrid(images, masks, [0, 1, 0, 1], ["cat", "dog"]).update(cams, preds, "epoch 2/5")
        again = series.update(cams, preds, "epoch 2/5")
        assert np.array_equal(np.asarray(fresh.image()), np.asarray(again.image()))  # pixel for pixel
        close(fresh.fig)
    series.close()
    assert [s for s in range(1, 21) if cam_due(s, 20, 5)] == [1, 5, 10, 15, 20]
    assert [s for s in range(1, 8) if cam_due(s, 7, 3)] == [1, 3, 6, 7]
    assert all(cam_due(s, 20, 1) for s in range(1, 21))
    from focusml import FocusmlError
    from focusml.core.config import RunConfig

    with pytest.raises(FocusmlError, match="--cam-every"):
        RunConfig(cam_every=0).validate()


# -- compare: warnings and panels ----------------------------------------------------------------------


def _tidy(rows):
    from focusml.analysis.summary import METRICS

    frame = pd.DataFrame(rows)
    for short in METRICS:
        if short not in frame:
            frame[short] = np.nan
    return frame


def test_compare_warns_on_a_tiny_gap_and_on_runs_trained_differently():
    from focusml.analysis.compare import PANELS, chart, warnings_for
    from focusml.analysis.summary import summarise
    from focusml.core.figures import close

    rows, raw = [], []
    for i, (method, seed, acc, epochs) in enumerate([("baseline", 0, 0.50, 20), ("upper_bound", 0, 0.55, 20),
                                                      ("pas", 0, 0.53, 20), ("pas", 1, 0.52, 5)]):
        rows.append({"run_id": f"r{i}", "dataset": "d", "method": method, "settings": "", "seed": str(seed),
                     "data_seed": "0", "model": "small", "acc": acc, "acc_cf": acc - 0.1, "flip": 0.3, "wr": 10.0})
        raw.append({"run_id": f"r{i}", "params.epochs": str(epochs), "params.lr": "0.003"})
    runs = _tidy(rows)
    table = summarise(runs)
    warned = warnings_for(table, pd.DataFrame(raw), runs)
    assert any("gap is only 5.0 points" in w for w in warned)
    assert any("differ in epochs (20: 3 runs, 5: 1 run)" in w for w in warned)
    assert not any("differ in lr" in w for w in warned)
    fig = chart(table, runs)
    assert len(fig.axes) == len(PANELS) == 5
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels[0].startswith("acc/test") and labels[2].startswith("flip/test") and labels[4].startswith("wr/test")
    empty = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_text().startswith("no run logged")]
    assert empty == ["no run logged evidence_in_mask/test"]  # said, not an empty panel
    pas = fig.axes[0].containers[0]  # error bars over the two pas seeds
    assert len(pas) == 3
    close(fig)


def test_assess_flags_degenerate_models():
    from focusml.tracking.registry import assess

    assert any("chance level" in w for w in assess({"acc/test": 0.11}, 10, {}))
    assert any("dead network" in w for w in assess({"acc/test": 0.9, "cam_dead/test": 1.0}, 10, {}))
    assert assess({"acc/test": 0.9, "cam_dead/test": 0.0}, 10, {"baseline": 0.2, "upper_bound": 0.9}) == []
