"""The UI link the commands print follows the tracking URI: the server itself, or `focusml server` on a store."""

from __future__ import annotations

from click.testing import CliRunner

from focusml.tracking import ui_link


def test_an_http_tracking_uri_is_the_link_without_its_credentials():
    assert ui_link("abc123", "http://me:secret@tracking.example:8080/") == "open http://tracking.example:8080/#/runs/abc123"
    assert ui_link(uri="https://mlflow.corp.example/mlflow") == "open https://mlflow.corp.example/mlflow"


def test_a_database_store_needs_focusml_server_first(tmp_path):
    local = "`focusml server`, then open http://127.0.0.1:5000"
    assert ui_link(uri=f"sqlite:///{tmp_path / 'mlflow.db'}") == local
    assert ui_link("r1", "postgresql://u@db/mlflow") == local + "/#/runs/r1"
    assert ui_link(uri="sqlite:///mlflow.db", server=".venv/bin/focusml server").startswith("`.venv/bin/focusml server`")


def test_the_link_follows_mlflow_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking-host:5001")
    assert ui_link("r2") == "open http://tracking-host:5001/#/runs/r2"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert ui_link() == "`focusml server`, then open http://127.0.0.1:5000"


def test_demo_summary_prints_the_servers_link(tracking_env):
    import mlflow

    from focusml.cli.demo_summary import main

    mlflow.set_experiment("ui-link-demo")  # an experiment without runs: the table is empty, the link printed
    res = CliRunner().invoke(main, ["--experiment", "ui-link-demo"])
    assert res.exit_code == 0, res.output
    assert f"Open the MLflow UI: open {tracking_env} (experiment 'ui-link-demo'" in res.output
    assert "127.0.0.1:5000" not in res.output
