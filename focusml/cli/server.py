"""`focusml server`: the MLflow tracking server and UI on focusml's store."""

from __future__ import annotations

import os
import shutil
import sys

import click

from focusml import FocusmlError


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to bind; keep 127.0.0.1 unless you mean to share it")
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--backend-store-uri", default=None, help="default: MLFLOW_TRACKING_URI if it is a database URI, else sqlite:///mlflow.db here")
@click.option("--artifacts-destination", default=None, help="default: ./mlartifacts here")
@click.option("--workers", default=1, show_default=True, type=int, help="server worker processes (one is plenty for a local UI)")
def server(host, port, backend_store_uri, artifacts_destination, workers):
    """Start the MLflow tracking server and UI on focusml's store."""
    from focusml.tracking import default_uri  # MLflow: imported when the command runs, not for --help

    env_uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    store = backend_store_uri or (env_uri if env_uri and not env_uri.startswith("http") else default_uri())
    mlflow_bin = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or shutil.which("mlflow")
    if mlflow_bin is None:
        raise FocusmlError("the `mlflow` command is not installed in this environment: pip install mlflow.")
    cmd = [mlflow_bin, "server", "--backend-store-uri", store, "--host", host, "--port", str(port),
           "--workers", str(workers)]
    if artifacts_destination:
        cmd += ["--artifacts-destination", artifacts_destination]
    click.echo(f"MLflow UI on http://{host}:{port}  (store: {store}); Ctrl-C stops it.", err=True)
    click.echo(f"Log runs to it with: export MLFLOW_TRACKING_URI=http://{host}:{port}", err=True)
    # MLflow's background job runner (GenAI jobs) is not used by focusml: leave it off unless asked for.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    sys.stderr.flush()
    os.execv(mlflow_bin, cmd)  # become the server: signals (Ctrl-C, SIGTERM) reach it directly
