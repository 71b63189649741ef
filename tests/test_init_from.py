"""`--init-from`: start from a trained model (local file, run id, runs:/, models:/NAME@ALIAS, models:/NAME/VERSION),
weights only, architecture checked before any run exists, lineage recorded on the new run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from focusml import FocusmlError, tracking
from focusml.core.callbacks import Callbacks
from focusml.cli import main
from focusml.core.config import RunConfig
from focusml.core.models import InitWeights, build_model, load_init_state, source_kind
from focusml.core.run import run as run_untracked
from focusml.tracking.sources import resolve

REPO = Path(__file__).resolve().parents[1]


class StartingWeights(Callbacks):
    """Keeps the model's weights as the run starts (before any training step)."""

    state: dict | None = None

    def run_scope(self, ctx):
        self.state = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        return super().run_scope(ctx)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def runs_of(experiment: str):
    exp = mlflow.get_experiment_by_name(experiment)
    return [] if exp is None else MlflowClient().search_runs([exp.experiment_id])


# -- without a tracking store ---------------------------------------------------------------------


def test_source_kinds(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"")
    assert source_kind(str(f)) == "file"
    assert source_kind("0123456789abcdef0123456789abcdef") == "run"
    assert source_kind("runs:/0123456789abcdef0123456789abcdef/model") == "runs"
    assert source_kind("models:/digits@champion") == "models"
    with pytest.raises(FocusmlError, match="no such file, and not a run id"):
        source_kind(str(tmp_path / "missing.pt"))


def test_wrong_architecture_names_both():
    state = build_model("small", 1, 10, 28).state_dict()
    with pytest.raises(FocusmlError) as err:
        load_init_state(build_model("small-bn", 1, 10, 28), InitWeights(state, "w.pt"), "small-bn", 28)
    msg = str(err.value)
    assert "model 'small' (1 input channel, 10 classes)" in msg and "builds model 'small-bn'" in msg
    assert "Pass --model small, or start from a source trained as model 'small-bn'" in msg
    with pytest.raises(FocusmlError, match="10 classes.*5 classes"):
        load_init_state(build_model("small", 1, 5, 28), InitWeights(state, "w.pt", "small"), "small", 28)


def test_core_run_refuses_a_run_id_and_double_weights(tiny_config, tmp_path):
    with pytest.raises(FocusmlError, match="resolved by a tracked run"):
        run_untracked(tiny_config(init_from="0123456789abcdef0123456789abcdef"))
    path = tmp_path / "w.pt"
    torch.save(build_model("small", 1, 10, 28).state_dict(), path)
    with pytest.raises(FocusmlError, match="pass one of them"):
        RunConfig(init_from=str(path), pretrained=str(path)).validate()


@pytest.mark.slow
def test_core_run_starts_from_a_local_file(tiny_config, tmp_path):
    torch.manual_seed(123)
    state = build_model("small", 1, 10, 28).state_dict()
    path = tmp_path / "w.pt"
    torch.save(state, path)
    seen = StartingWeights()
    run_untracked(tiny_config(method="pas", init_from=str(path)), seen)
    assert same(seen.state, state)


# -- against a real MLflow server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def source_run(mlflow_server, tiny_config):
    """A finished baseline run with its model logged and registered as init-digits@baseline (once per module)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mlflow.set_tracking_uri(mlflow_server)
        result = tracking.run(tiny_config(method="baseline", experiment="init-source", log_model=True))
        version = tracking.register(result.run_id, "init-digits", alias="baseline")
    state = {k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()}
    return result.run_id, version, state


def test_every_source_kind_gives_the_evaluated_weights(source_run, tracking_env, tmp_path):
    run_id, version, state = source_run
    logged = MlflowClient().get_run(run_id).outputs.model_outputs[0].model_id
    local = tmp_path / "last.pt"
    torch.save(state, local)
    for source in (run_id, f"runs:/{run_id}", f"runs:/{run_id}/model", f"runs:/{run_id}/checkpoints/last.pt",
                   "models:/init-digits@baseline", f"models:/init-digits/{version}", f"models:/{logged}", str(local)):
        got = resolve(source)
        assert same(got.weights.state, state), source
        if source != str(local):
            assert got.tags["focusml.init_from"] == run_id and got.model_id == logged, source
            assert got.tags["focusml.init_from_checkpoint"] == "checkpoints/last.pt"
            assert got.weights.model == "small"
    assert resolve("models:/init-digits@baseline").tags["focusml.init_from_model"] == f"init-digits/{version}"
    assert resolve("models:/init-digits@baseline").tags["focusml.init_from_alias"] == "baseline"
    assert resolve(str(local)).tags == {"focusml.init_from_file": str(local.resolve())}


def test_refining_from_the_registry_records_lineage(source_run, tracking_env, tiny_config):
    run_id, version, state = source_run
    seen = StartingWeights()
    result = tracking.run(tiny_config(method="pas", experiment="init-refine", init_from="models:/init-digits@baseline"),
                          callbacks=seen)
    assert same(seen.state, state)
    r = MlflowClient().get_run(result.run_id)
    assert r.data.tags["focusml.init_from"] == run_id
    assert r.data.tags["focusml.init_from_model"] == f"init-digits/{version}"
    assert r.data.params["init_from"] == "models:/init-digits@baseline"
    source_model = MlflowClient().get_run(run_id).outputs.model_outputs[0].model_id
    assert [m.model_id for m in r.inputs.model_inputs] == [source_model]  # the UI links the source model


def test_the_selected_checkpoint_wins_over_last(tracking_env, tmp_path):
    last, chosen = build_model("small", 1, 10, 28).state_dict(), build_model("small", 1, 10, 28).state_dict()
    mlflow.set_experiment("init-selected")
    with mlflow.start_run() as r:
        for name, state in (("last.pt", last), ("selected_epoch3.pt", chosen)):
            torch.save(state, tmp_path / name)
            mlflow.log_artifact(str(tmp_path / name), artifact_path="checkpoints")
    got = resolve(r.info.run_id)
    assert got.tags["focusml.init_from_checkpoint"] == "checkpoints/selected_epoch3.pt"
    assert same(got.weights.state, chosen)


def cli(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--epochs", "1", "--device", "cpu", "--no-log-model", *args])
    return exit_.value.code, capsys.readouterr().err


def test_refusals_exit_2_and_leave_no_run(source_run, tracking_env, capsys):
    run_id, _, _ = source_run
    with mlflow.start_run(experiment_id=mlflow.set_experiment("init-bare").experiment_id) as bare:
        mlflow.log_param("model", "small")
    cases = [
        (["--init-from", run_id, "--model", "small-bn"], "the weights are model 'small'"),
        (["--init-from", run_id, "--model", "vgg11"], "builds model 'vgg11'"),
        (["--init-from", bare.info.run_id], "has no checkpoint (checkpoints/last.pt)"),
        (["--init-from", "0123456789abcdef0123456789abcdef"], "not found"),
        (["--init-from", "models:/init-digits@nope"], "no such registered model version"),
        (["--init-from", "models:/no-such-model/1"], "no such registered model version"),
        (["--init-from", "models:/init-digits"], "write models:/NAME@ALIAS"),
    ]
    for args, fragment in cases:
        code, err = cli([*args, "--method", "pas", "--experiment", "init-refused"], capsys)
        assert code == 2 and fragment in err, (args, err)
    assert runs_of("init-refused") == []


@pytest.mark.slow
def test_mlflow_run_entry_point_takes_init_from_and_a_mask_budget(tracking_env, cli_env, tmp_path):
    torch.manual_seed(7)
    state = build_model("small", 1, 10, 28).state_dict()
    path = tmp_path / "start.pt"
    torch.save(state, path)
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    params = {"epochs": 1, "batch_size": 128, "init_from": path, "mask_budget": 20, "mask_corruption": "partial",
              "corruption_strength": 0.3}
    res = subprocess.run([mlflow_bin, "run", str(REPO), "-e", "pas", *(a for k, v in params.items() for a in ("-P", f"{k}={v}")),
                          "--env-manager", "local", "--experiment-name", "mlproject-init"],
                         env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    (r,) = runs_of("mlproject-init")
    assert r.info.status == "FINISHED" and r.data.tags["focusml.init_from_file"] == str(path)
    p = r.data.params
    assert p["init_from"] == str(path) and p["mask_budget"] == "20" and p["annotated_images"] == "20"
    assert p["mask_corruption"] == "partial" and p["corruption_strength"] == "0.3"


def test_every_mlproject_training_entry_point_takes_the_new_options():
    import yaml

    from focusml.core.methods import METHODS

    entries = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    for name, cls in METHODS.items():
        params = entries[name]["parameters"]
        assert "init_from" in params and "--init-from {init_from}" in entries[name]["command"], name
        assert ("mask_budget" in params and "mask_corruption" in params) == cls.uses_masks, name
