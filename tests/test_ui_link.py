"""The UI link the commands print follows the tracking URI (the server itself, or `focusml server` on a
store) and opens the MLflow 3 UI on its classic ML side (`workflowType=machine_learning`)."""

from __future__ import annotations

from click.testing import CliRunner

from focusml.tracking import ui_link, ui_page

ML = "workflowType=machine_learning"


def test_an_http_tracking_uri_is_the_link_without_its_credentials():
    assert (ui_link("abc123", "http://me:secret@tracking.example:8080/", experiment_id="7")
            == f"open http://tracking.example:8080/#/experiments/7/runs/abc123?{ML}")
    assert ui_link(uri="https://mlflow.corp.example/mlflow") == f"open https://mlflow.corp.example/mlflow/#/experiments?{ML}"


def test_a_database_store_needs_focusml_server_first(tmp_path):
    local = "`focusml server`, then open http://127.0.0.1:5000"
    assert ui_link(uri=f"sqlite:///{tmp_path / 'mlflow.db'}") == f"{local}/#/experiments?{ML}"
    assert ui_link("r1", "postgresql://u@db/mlflow", experiment_id="3") == f"{local}/#/experiments/3/runs/r1?{ML}"
    assert ui_link(uri="sqlite:///mlflow.db", server=".venv/bin/focusml server").startswith("`.venv/bin/focusml server`")


def test_every_page_opens_the_ml_view_the_direct_run_route_cannot():
    """`#/runs/RID` redirects to the run and drops the query, so a run's link names its experiment."""
    assert ui_page("5", "r") == f"#/experiments/5/runs/r?{ML}"
    assert ui_page("5") == f"#/experiments/5/runs?{ML}"
    assert ui_page() == f"#/experiments?{ML}"
    assert ui_page(run_id="r") == "#/runs/r"  # the experiment unknown: the best there is
    assert ui_page("5", view=True) == f"#/experiments/5/runs?{ML}&viewStateShareKey=focusml"
    assert ui_page("5", "r", view=True) == f"#/experiments/5/runs/r?{ML}"  # a run's page has no runs table


def test_an_experiments_link_opens_focusmls_saved_view_which_it_adds_once(tracking_env):
    """The view is an experiment tag in the web app's saved-view envelope; the link names it only once it is
    there, and an experiment that has it as written is left alone (no rewrite at every link)."""
    import json

    import mlflow

    from focusml.tracking import HEADLINE, VIEW_TAG

    client = mlflow.MlflowClient()
    eid = client.create_experiment("ui-link-view")
    assert ui_link(experiment_id=eid) == f"open {tracking_env}/#/experiments/{eid}/runs?{ML}&viewStateShareKey=focusml"
    held = client.get_experiment(eid).tags[VIEW_TAG]
    envelope = json.loads(held)
    assert envelope["name"] == "focusml: headline metrics" and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])
    assert state["selectedColumns"] == [f"metrics.`{m}`" for m in HEADLINE] == [
        "metrics.`acc/test`", "metrics.`acc/val_cf`", "metrics.`flip/test`"]
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`acc/test`", False)
    ui_link(experiment_id=eid)
    assert client.get_experiment(eid).tags[VIEW_TAG] == held  # kept as it was
    client.set_experiment_tag(eid, VIEW_TAG, "not a view")  # damaged (or an older focusml's): written again
    ui_link(experiment_id=eid)
    assert json.loads(json.loads(client.get_experiment(eid).tags[VIEW_TAG])["state"]) == state
    # an experiment the store does not know: still a link, without a view that could not be found
    assert ui_link(experiment_id="987654") == f"open {tracking_env}/#/experiments/987654/runs?{ML}"


def test_the_link_follows_mlflow_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking-host:5001")
    assert ui_link("r2", experiment_id="1") == f"open http://tracking-host:5001/#/experiments/1/runs/r2?{ML}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert ui_link() == f"`focusml server`, then open http://127.0.0.1:5000/#/experiments?{ML}"


def test_a_runs_link_asks_the_store_for_its_experiment(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("linked")
    run = client.create_run(exp)
    assert ui_link(run.info.run_id, uri).endswith(f"/#/experiments/{exp}/runs/{run.info.run_id}?{ML}")
    assert ui_link("no-such-run", uri).endswith("/#/runs/no-such-run")  # the store cannot say: still a link


def test_demo_summary_prints_the_servers_link(tracking_env):
    import mlflow

    from focusml.cli.demo_summary import main

    mlflow.set_experiment("ui-link-demo")  # an experiment without runs: the table is empty, the link printed
    res = CliRunner().invoke(main, ["--experiment", "ui-link-demo"])
    assert res.exit_code == 0, res.output
    assert f"Open the MLflow UI: open {tracking_env}/#/experiments?{ML} (experiment 'ui-link-demo'" in res.output
    assert "127.0.0.1:5000" not in res.output
    assert "image tab" not in res.output and "Model metrics" in res.output
