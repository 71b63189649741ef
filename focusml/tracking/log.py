"""What a run logs to MLflow: params, metrics, figures, images, files, the dataset and the model.

Every function acts on the active run (`store.start_run`), except `log_artifacts_to`, which
adds a folder to a finished run named by its id.
"""

from __future__ import annotations

import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature

import focusml
from focusml.figures import close


def active_run_id() -> str | None:
    run = mlflow.active_run()
    return run.info.run_id if run else None


def experiment_name(experiment_id: str) -> str:
    return mlflow.get_experiment(experiment_id).name


def log_params(params: dict[str, Any]) -> None:
    """Log params not already on the run (`mlflow run` logs its entry-point params first)."""
    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    fresh = {k: ("" if v is None else v) for k, v in params.items() if k not in existing}
    if fresh:
        mlflow.log_params(fresh)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log every value, none dropped: NaN (e.g. WR without masks) is stored as NaN, ±inf as MLflow's SQL
    stores keep it (±1.7976931348623157e308); only None (no value at all) is left out."""
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step=step)


def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)


def log_figure(fig, path: str) -> None:
    """Log a matplotlib figure as `path` and close it."""
    mlflow.log_figure(fig, path)
    close(fig)


def log_image_step(image, key: str, step: int) -> None:
    mlflow.log_image(image, key=key, step=step)


def log_dict(obj: dict, path: str) -> None:
    mlflow.log_dict(obj, path)


def log_state_dict(state: dict, artifact_path: str, filename: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        torch.save(state, path)
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_artifacts_to(run_id: str, folder: str | Path, artifact_path: str) -> None:
    """Add a local folder to the artifacts of run `run_id` (active or not)."""
    mlflow.MlflowClient().log_artifacts(run_id, str(folder), artifact_path=artifact_path)


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
    """Log the model (MLflow 3: `name=`) with a signature and an input example; return its URI.

    The focusml package travels with it (`code_paths`), so the pickled CamNet loads anywhere.
    """
    model = model.cpu().eval()
    x = example.cpu().numpy().astype(np.float32)
    with torch.no_grad():
        y = model(example.cpu()).numpy()
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        signature=infer_signature(x, y),
        input_example=x,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                          f"torchvision=={version('torchvision').split('+')[0]}", "focusml"],
        code_paths=[str(Path(focusml.__file__).parent)],
    )
    return info.model_uri
