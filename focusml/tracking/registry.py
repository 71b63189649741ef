"""The Model Registry: a run's logged model as a new version of a registered model, with an alias."""

from __future__ import annotations

import mlflow

from focusml import FocusmlError


def register(run_id: str, name: str, alias: str | None = "champion", artifact: str = "model") -> str:
    """Register a run's logged model as a new version of `name`; set `alias` on it. Returns the version."""
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        raise FocusmlError(f"run {run_id} not found in {mlflow.get_tracking_uri()}: {e.message}") from None
    models = [m for m in (run.outputs.model_outputs if run.outputs else [])]
    source = f"runs:/{run_id}/{artifact}"
    if models:
        logged = client.get_logged_model(models[0].model_id)
        source = logged.model_uri
    elif not client.list_artifacts(run_id, artifact):
        raise FocusmlError(f"run {run_id} has no logged model to register (it ran with `log_model: false` / "
                           "--no-log-model, or was pruned or failed before the end). Pick a run that logged one.")
    mv = mlflow.register_model(source, name)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)
