"""Everything that talks to MLflow: the store, runs (marked FAILED on error), and what a run logs.

The tracking URI is `MLFLOW_TRACKING_URI` when set, else a SQLite file `mlflow.db` in the
current directory (MLflow 3 has no file store). A remote server is checked for reachability
before any run starts, so a wrong URI never leaves a half-written run behind.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import mlflow
import numpy as np
import torch

from focusml import FocusmlError

DEFAULT_STORE = "mlflow.db"


def default_uri() -> str:
    return f"sqlite:///{Path.cwd() / DEFAULT_STORE}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise FocusmlError unless an http(s) tracking server answers /health."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status != 200:
                raise OSError(f"HTTP {r.status}")
    except (OSError, urllib.error.URLError) as e:
        raise FocusmlError(
            f"cannot reach the MLflow tracking server at {uri} ({getattr(e, 'reason', e)}). Start it with "
            "`focusml server` (or `mlflow server --host 127.0.0.1 --port PORT`), or unset MLFLOW_TRACKING_URI "
            "to use the local SQLite store."
        ) from None


def setup(uri: str | None = None) -> str:
    """Point MLflow at `uri` (default: `tracking_uri()`), after checking it answers."""
    uri = uri or tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return uri


class StopRun(Exception):
    """Raised inside `start_run` to end a run early on purpose, not as a failure (e.g. a pruned
    Optuna trial): the run gets `tags` and ends with `status` instead of FAILED."""

    status = "KILLED"
    tags: dict[str, str] = {}


@contextmanager
def start_run(experiment: str, run_name: str | None = None, parent_run_id: str | None = None,
              tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under `mlflow run`, resume) a run; end it FAILED if the block raises.

    A child run names its parent explicitly (`parent_run_id`), so trials in other threads or
    processes nest correctly without relying on the active-run stack.
    """
    env_run = os.environ.get("MLFLOW_RUN_ID")
    if env_run and parent_run_id is None and mlflow.active_run() is None:
        run = mlflow.start_run(run_id=env_run, tags=tags)
    else:
        exp = mlflow.set_experiment(experiment)
        active = mlflow.active_run()
        run = mlflow.start_run(
            experiment_id=exp.experiment_id,
            run_name=run_name,
            parent_run_id=parent_run_id,
            nested=parent_run_id is not None and active is not None,
            tags=tags,
        )
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise
    except StopRun as e:
        if e.tags:
            mlflow.set_tags(e.tags)
        mlflow.end_run(status=e.status)
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


def log_params(params: dict[str, Any]) -> None:
    """Log params not already on the run (`mlflow run` logs its entry-point params first)."""
    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    fresh = {k: ("" if v is None else v) for k, v in params.items() if k not in existing}
    if fresh:
        mlflow.log_params(fresh)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    finite = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
    mlflow.log_metrics(finite, step=step)


def log_figure(fig, path: str) -> None:
    from focusml.figures import close

    mlflow.log_figure(fig, path)
    close(fig)


def log_image_step(image, key: str, step: int) -> None:
    mlflow.log_image(image, key=key, step=step)


def log_state_dict(state: dict, artifact_path: str, filename: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        torch.save(state, path)
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_dataset(data, fingerprint: str) -> None:
    """Record the training data as a run input (metadata and digest; arrays stay local)."""
    split = data.split("train")
    ds = mlflow.data.from_numpy(
        features=split.images[:1].numpy(),  # a schema sample; the digest identifies the content
        targets=split.labels.numpy(),
        name=data.name,
        digest=fingerprint,
    )
    mlflow.log_input(ds, context="training", tags={"classes": ",".join(data.classes)[:250]})


def log_model(model: torch.nn.Module, example: torch.Tensor) -> str:
    """Log the model (MLflow 3: `name=`) with a signature and an input example; return its URI."""
    from mlflow.models import infer_signature

    model = model.cpu().eval()
    x = example.cpu().numpy().astype(np.float32)
    with torch.no_grad():
        y = model(example.cpu()).numpy()
    import torchvision

    info = mlflow.pytorch.log_model(
        model,
        name="model",
        signature=infer_signature(x, y),
        input_example=x,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                          f"torchvision=={torchvision.__version__.split('+')[0]}", "focusml"],
        code_paths=[str(Path(__file__).parent)],
    )
    return info.model_uri


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
